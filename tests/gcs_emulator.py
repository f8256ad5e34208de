"""A local GCS emulator for the tests: gcp-storage-emulator, in memory, with one bucket.

    python -m tests.gcs_emulator PORT BUCKET

The emulator does not say an object's generation when it sends the object's bytes (the
x-goog-generation header of real GCS); tensorstore needs it for the conditional writes of
orbax's OCDBT checkpoints, so it is added here, before the emulator's routes are built. Nor
does it move objects (objects.move, which gcsfs tries first and retries for half a minute on
the emulator's 501 before it copies and deletes): added as a copy and a delete. Two costs that
grow with the bucket are taken out, so a long log costs here what it costs in GCS: the in-memory
emulator rewrote a JSON file of every object's metadata on each request (there is nothing to
persist), and computed an MD5 of a whole composed object (GCS's composite objects have none).
"""

import sys
from http import HTTPStatus

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


def main(port: int, bucket: str) -> None:
  server.create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket).run()


if __name__ == "__main__":
  main(int(sys.argv[1]), sys.argv[2])
