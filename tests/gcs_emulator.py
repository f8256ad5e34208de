"""A local GCS emulator for the tests: gcp-storage-emulator, in memory, with one bucket.

    python -m tests.gcs_emulator PORT BUCKET

The emulator does not say an object's generation when it sends the object's bytes (the
x-goog-generation header of real GCS); tensorstore needs it for the conditional writes of
orbax's OCDBT checkpoints, so it is added here, before the emulator's routes are built. Nor
does it move objects (objects.move, which gcsfs tries first and retries for half a minute on
the emulator's 501 before it copies and deletes): added as a copy and a delete.
"""

import sys
from http import HTTPStatus

from gcp_storage_emulator import server, settings
from gcp_storage_emulator.exceptions import NotFound
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


objects.download = _download_with_generation


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


def main(port: int, bucket: str) -> None:
  server.create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket).run()


if __name__ == "__main__":
  main(int(sys.argv[1]), sys.argv[2])
