"""The smallest TPU slice each config fits on, at its own global batch, compiled here.

    python -m benchmarks.where_it_fits --configs fcmae_base finetune_base --generations v5e v5p
    python -m benchmarks.where_it_fits --all --out runs/fits.jsonl      # docs/tpu.md's table

For each config and TPU generation it runs `train.py` / `finetune.py --compile_only=SLICE`
(each compile in a fresh process), starting from the smallest slice. A compile gives the memory
per device; since the activations grow with the per-device batch, the next slice tried is the
smallest one that this predicts to fit (`--compile_only`'s test: 10% of HBM left), and the
search ends at the first slice that really fits, after checking the slice below it does not.
Every compile's JSON line goes to `--out`; the table printed last is docs/tpu.md's.
Needs the TPU runtime (pip install -r requirements-tpu.txt). Each compile takes minutes on a CPU
host (docs/tpu.md lists the times).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

SLICES = {  # chips -> topology, the common slice shapes of each generation
  "v5e": {4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"},
  "v5p": {
    4: "2x2x1",
    8: "2x2x2",
    16: "2x2x4",
    32: "2x4x4",
    64: "4x4x4",
    128: "4x4x8",
    256: "4x8x8",
  },
  "v6e": {4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"},
}
SIZES = ("atto", "femto", "pico", "nano", "tiny", "base", "large", "huge")
ALL = [f"fcmae_{s}" for s in SIZES] + [f"finetune_{s}" for s in SIZES]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def compile_for(config: str, topology: str, extra: list[str]) -> dict:
  """The --compile_only JSON of one config on one slice (fits False when it ran out of memory)."""
  script = "train.py" if config.startswith("fcmae_") else "finetune.py"
  cmd = [
    sys.executable,
    os.path.join(REPO, script),
    "--config",
    os.path.join(REPO, "configs", f"{config}.py"),
    f"--compile_only={topology}",
    *extra,
  ]
  done = subprocess.run(
    cmd, cwd=REPO, capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu")
  )
  lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
  if not lines:
    raise RuntimeError(f"{' '.join(cmd)} printed no result:\n{done.stderr[-3000:]}")
  result = json.loads(lines[-1])
  result["config"] = config
  return result


def _needed_gib(result: dict) -> float | None:
  """GiB per device the compile needed (parsed from the compiler's message when it ran out)."""
  if "total_gib_per_device" in result:
    return result["total_gib_per_device"]
  found = re.search(r"(?:Used |required for [^(]*\()([\d.]+)G", result.get("out_of_memory", ""))
  return float(found.group(1)) if found else None  # "Used 17.52G of ..." / "... (20.64G) exceeds"


def smallest_slice(config: str, generation: str, extra: list[str], log) -> dict:
  """Searches the slices of `generation` for the smallest one `config` fits on."""
  slices = SLICES[generation]
  chips = sorted(slices)
  tried: dict[int, dict] = {}

  def attempt(n):
    if n not in tried:
      tried[n] = compile_for(config, f"{generation}:{slices[n]}", extra)
      log(tried[n])
    return tried[n]

  n = chips[0]
  while True:
    result = attempt(n)
    if result.get("fits"):
      below = [c for c in chips if c < n]
      if not below or (below[-1] in tried and not tried[below[-1]].get("fits")):
        return result
      n = below[-1]  # confirm the slice below does not fit (or take it if it does)
      continue
    larger = [c for c in chips if c > n]
    if not larger:
      return result
    need, hbm = _needed_gib(result), result.get("hbm_gib_per_device") or 0
    state = result.get("state_gib_per_device", 0.0)
    guess = larger[0]
    if need and hbm:  # activations scale as 1 / chips; the sharded state as well, or not at all
      for c in larger:
        if state + (need - state) * n / c <= 0.9 * hbm:
          guess = c
          break
      else:
        guess = larger[-1]
    if guess in tried:
      guess = min(c for c in larger if c not in tried) if any(c not in tried for c in larger) else n
      if guess == n:
        return result
    n = guess


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", nargs="*", default=[])
  parser.add_argument(
    "--all", action="store_true", help="all 16 pretraining and finetuning configs"
  )
  parser.add_argument("--generations", nargs="+", default=["v5e", "v5p"], choices=sorted(SLICES))
  parser.add_argument("--out", default="fits.jsonl")
  parser.add_argument(
    "extra", nargs="*", help="more flags for every compile, e.g. --config.grad_accum_steps=4"
  )
  args = parser.parse_args(argv)
  configs = ALL if args.all else args.configs
  rows = []
  with open(args.out, "a") as out:

    def log(result):
      out.write(json.dumps(result) + "\n")
      out.flush()
      print(
        f"  {result['config']} {result['topology']}: fits={result.get('fits')} "
        f"{result.get('total_gib_per_device', result.get('out_of_memory'))}",
        flush=True,
      )

    for config in configs:
      for generation in args.generations:
        rows.append(smallest_slice(config, generation, args.extra, log))
  print(
    "| config | slice | mesh | per-device batch | GiB per device (of HBM) | GFLOP per example "
    "| compile (s) |"
  )
  print("|---|---|---|---|---|---|---|")
  for r in rows:
    mesh = " x ".join(f"{k} {v}" for k, v in r.get("mesh", {}).items())
    if r.get("fits"):
      print(
        f"| {r['config']} | {r['topology']} | {mesh} | {r['per_device_batch']:g} | "
        f"{r['total_gib_per_device']:.1f} of {r['hbm_gib_per_device']:.0f} | "
        f"{r['gflop_per_example']:.1f} | {r['compile_seconds']:.0f} |"
      )
    else:
      print(f"| {r['config']} | none up to {r['topology']} | {mesh} | | | | |")


if __name__ == "__main__":
  main()
