"""A local GCS emulator for the tests: gcp-storage-emulator, in memory, with one bucket.

    python -m tests.gcs_emulator PORT BUCKET

`FaultProxy` stands in front of it for the tests of transient and permanent storage errors;
`QuickAsyncio` cuts gcsfs's waits before a retry short within a test.

The emulator does not say an object's generation when it sends the object's bytes (the
x-goog-generation header of real GCS); tensorstore needs it for the conditional writes of
orbax's OCDBT checkpoints, so it is added here, before the emulator's routes are built. Nor
does it move objects (objects.move, which gcsfs tries first and retries for half a minute on
the emulator's 501 before it copies and deletes): added as a copy and a delete. Two costs that
grow with the bucket are taken out, so a long log costs here what it costs in GCS: the in-memory
emulator rewrote a JSON file of every object's metadata on each request (there is nothing to
persist), and computed an MD5 of a whole composed object (GCS's composite objects have none).
"""

import asyncio
import http.client
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from gcp_storage_emulator import settings
from gcp_storage_emulator import storage as emulator_storage
from gcp_storage_emulator.exceptions import Conflict, NotFound
from gcp_storage_emulator.handlers import objects

_download = objects.download


def _download_with_generation(request, response, storage, *args, **kwargs):
  _download(request, response, storage, *args, **kwargs)
  try:
    obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
  except Exception:  # noqa: BLE001 (no such object: the 404 is already set)
    return
  response["x-goog-generation"] = str(obj["generation"])
  response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))


def _compose(request, response, storage, *args, **kwargs):
  """objects.compose as the emulator has it, without the MD5 of the whole object, and with
  GCS's ifGenerationMatch precondition (412 when the destination is at another generation)."""
  bucket = request.params["bucket_name"]
  try:
    wanted = request.query.get("ifGenerationMatch")
    if wanted:
      current = storage.get_file_obj(bucket, request.params["object_id"])["generation"]
      if str(current) != wanted[0]:
        response.status = HTTPStatus.PRECONDITION_FAILED
        return
    sources = request.data["sourceObjects"]
    content_type = storage.get_file_obj(bucket, sources[0]["name"])["contentType"]
    content = b"".join(storage.get_file(bucket, s["name"]) for s in sources)
    obj = objects._make_object_resource(
      request.base_url,
      bucket,
      request.params["object_id"],
      content_type,
      len(content),
      request.data["destination"],
    )
    obj["crc32c"] = objects._crc32c(content)
    storage.create_file(bucket, request.params["object_id"], content, obj)
    response.json(obj)
  except NotFound:
    response.status = HTTPStatus.NOT_FOUND
  except Conflict as err:
    objects._handle_conflict(response, err)


def _move(request, response, storage, *args, **kwargs):
  bucket, source = request.params["bucket_name"], request.params["object_id"]
  try:
    moved = objects._copy(
      request.base_url, storage, bucket, source, bucket, request.params["dest_object_id"]
    )
  except NotFound:
    response.status = HTTPStatus.NOT_FOUND
    return
  objects._delete(storage, bucket, source)
  response.json(moved)


objects.download = _download_with_generation
objects.compose = _compose
emulator_storage.Storage._write_config_to_file = lambda self: None  # in memory: nothing to keep

from gcp_storage_emulator import server  # noqa: E402 (builds its routes from the handlers above)

server.HANDLERS = (
  *(
    (
      rf"^{p}/b/(?P<bucket_name>[-.\w]+)/o/(?P<object_id>.*[^/]+)/moveTo/o/"
      r"(?P<dest_object_id>.*[^/]+)$",
      {"POST": _move},
    )
    for p in (settings.API_ENDPOINT, "")
  ),
  *server.HANDLERS,
)


class QuickAsyncio:
  """What gcsfs.retry may be given for `asyncio` (monkeypatch.setattr(gcsfs.retry, "asyncio",
  QuickAsyncio())): the module, but for `sleep`, which waits at most 10 ms. gcsfs fixes its waits
  before a retry in its code (1-2 s, then doubling) and offers no setting; what it retries and
  how often stay its own."""

  def __getattr__(self, name):
    return getattr(asyncio, name)

  @staticmethod
  async def sleep(delay, result=None):
    return await asyncio.sleep(min(delay, 0.01), result)


class _QuietServer(ThreadingHTTPServer):
  """Says nothing of a connection its client closed first (one it dropped, or a client that
  gave up on an injected error): socketserver prints a traceback for each."""

  def handle_error(self, request, client_address):
    if not isinstance(sys.exc_info()[1], ConnectionError):
      super().handle_error(request, client_address)


class FaultProxy:
  """An HTTP proxy in front of the emulator at `target` (http://HOST:PORT) that fails one request
  in `every`, in turn with 503, with 429 (neither reaches the emulator) and by closing the
  connection after the emulator has done the request (its answer is lost: a retried write must
  not be done twice). With `refuse_writes`, every request that changes something is answered
  403, as a bucket does to a credential that may read but not write. `faults` counts what was
  injected; `url` is what STORAGE_EMULATOR_HOST is set to."""

  KINDS = ("503", "429", "drop")

  def __init__(self, target: str, every: int = 6):
    self.target = target.split("://", 1)[-1]
    self.every, self.refuse_writes = every, False
    self.faults = dict.fromkeys(self.KINDS, 0)
    self.faults["403"] = 0
    self._count = 0
    self._lock = threading.Lock()
    proxy = self

    class Handler(BaseHTTPRequestHandler):
      protocol_version = "HTTP/1.1"

      def log_message(self, *args):
        pass

      def _handle(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        kind = proxy._fault(self.command)
        if kind in ("503", "429", "403"):
          self.send_response(int(kind))
          self.send_header("Content-Type", "application/json")
          text = b'{"error": {"code": %s, "message": "injected"}}' % kind.encode()
          self.send_header("Content-Length", str(len(text)))
          self.end_headers()
          self.wfile.write(text)
          return
        if kind == "drop" and "upload_id=" in self.path:
          # A resumable upload's last chunk dropped before the emulator sees it: the emulator
          # answers a retry of a finished session 404 where GCS answers with the object.
          self.close_connection = True
          return
        conn = http.client.HTTPConnection(proxy.target, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
        conn.request(self.command, self.path, body=body, headers=headers)
        answer = conn.getresponse()
        data = answer.read()
        conn.close()
        if kind == "drop":
          self.close_connection = True
          return
        self.send_response(answer.status)
        for k, v in answer.getheaders():
          if k.lower() not in ("content-length", "transfer-encoding", "connection"):
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

      do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

    self._server = _QuietServer(("127.0.0.1", 0), Handler)
    self._server.daemon_threads = True
    self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
    self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
    self._thread.start()

  def _fault(self, method: str) -> str | None:
    with self._lock:
      if self.refuse_writes and method in ("POST", "PUT", "PATCH", "DELETE"):
        self.faults["403"] += 1
        return "403"
      self._count += 1
      if not self.every or self._count % self.every:
        return None
      kind = self.KINDS[(self._count // self.every) % len(self.KINDS)]
      self.faults[kind] += 1
      return kind

  def close(self) -> None:
    self._server.shutdown()
    self._server.server_close()


def main(port: int, bucket: str) -> None:
  server.create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket).run()


if __name__ == "__main__":
  main(int(sys.argv[1]), sys.argv[2])
