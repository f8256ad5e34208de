"""A run's metrics.jsonl in a bucket, row by row: what a row costs as the log grows, with
core/storage.py's Log (each row uploaded alone and composed onto the object in the bucket) and
with the design it replaced (the whole object uploaded again for every row).

    python -m benchmarks.metrics_log --where gs://bucket/bench --rows 100000 --rewrite_rows 2000

Each row is a training row as trainer/loop.py writes it (164 bytes), and is stored before the
next is written, as a run stores it before printing it. Prints, per design, the seconds in all,
the milliseconds per row over the first and the last tenth of the rows, and the bytes uploaded.
With STORAGE_EMULATOR_HOST set, gs:// is that emulator; without it, Cloud Storage itself.
"""

from __future__ import annotations

import argparse
import json
import time

from core import errors, storage

ROW = {
  "step": 100000,
  "loss": 0.123456789,
  "lr": 0.0001234,
  "images_per_sec": 1234.5,
  "epoch": 12.3456,
  "tflops_per_device": 12.345,
  "mfu": 0.4567,
  "skipped_images": 0,
}


class Rewrite:
  """The design before: what the log holds, uploaded whole after each row."""

  def __init__(self, p):
    self.path, self.content = p, b""

  def write(self, text: str) -> None:
    self.content += text.encode()
    storage.write_bytes(self.path, self.content)

  def close(self) -> None:
    pass


def timed(log, rows: int) -> dict:
  row = json.dumps(ROW) + "\n"
  tenth = max(rows // 10, 1)
  marks = []
  start = time.perf_counter()
  for i in range(rows):
    if i in (0, tenth, rows - tenth):
      marks.append(time.perf_counter())
    log.write(row)
  end = time.perf_counter()
  log.close()
  return {
    "rows": rows,
    "seconds": end - start,
    "first_ms_per_row": 1e3 * (marks[1] - marks[0]) / tenth,
    "last_ms_per_row": 1e3 * (end - marks[-1]) / tenth,
    "row_bytes": len(row),
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--where", required=True, help="gs://BUCKET/PATH (or a local directory)")
  parser.add_argument("--rows", type=int, default=100_000, help="rows through storage.Log")
  parser.add_argument("--rewrite_rows", type=int, default=2_000, help="rows of the old design")
  args = parser.parse_args(argv)
  storage.setup()
  storage.check_location(args.where, "--where")
  where = f"{args.where.rstrip('/')}/{int(time.time())}"
  results = []
  for name, rows, make in (
    ("append (compose)", args.rows, lambda p: storage.Log(p)),
    ("rewrite whole", args.rewrite_rows, Rewrite),
  ):
    if not rows:
      continue
    p = f"{where}/{name.split()[0]}/metrics.jsonl"
    result = timed(make(p), rows)
    n, size = result["rows"], result["row_bytes"]
    # Bytes sent: each row once; or, rewritten, the whole log after each row.
    result["uploaded_mb"] = (
      n * size if name.startswith("append") else size * n * (n + 1) / 2
    ) / 1e6
    assert storage.read_text(p).count("\n") == n
    print(
      f"{name:17s} {n:7d} rows: {result['seconds']:8.1f} s, {result['first_ms_per_row']:6.2f} ms "
      f"per row over the first tenth, {result['last_ms_per_row']:6.2f} over the last; "
      f"{result['uploaded_mb']:.1f} MB uploaded",
      flush=True,
    )
    results.append(result)
  storage.rmtree(where)
  return results


if __name__ == "__main__":
  errors.guarded(main)(None)
