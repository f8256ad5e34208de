"""Every entry point, given bad input, ends with one clear message and exit status 2, and leaves
what was already in the workdir as it was. One row per case: the command, the words its message
must contain (what was wrong and where), and a check that nothing written before changed."""

import http.server
import json
import os
import shutil
import subprocess
import sys
import threading

import jax
import numpy as np
import pytest

from configs import fcmae_demo
from fcmae import pretrain
from tests.helpers import SCAN, override
from tests.models.hub_cache import json_bytes, write_repo
from trainer import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = [
  "--config.batch_size=16",
  "--config.total_steps=2",
  "--config.warmup_steps=1",
  "--config.checkpoint_every_steps=1",
  "--config.eval_every_steps=0",
  "--config.mesh.data=1",
  "--config.data.image_size=64",
  "--config.model.scan=True",
]


@pytest.fixture(scope="session")  # made once per worker, whatever the order
def trained(tmp_path_factory):
  """A finished two-step pretraining workdir (checkpoints 1 and 2) to resume from."""
  workdir = tmp_path_factory.mktemp("trained") / "run"
  config = override(
    fcmae_demo.get_config(),
    {
      "batch_size": 16,
      "total_steps": 2,
      "warmup_steps": 1,
      "checkpoint_every_steps": 1,
      "eval_every_steps": 0,
      "mesh.data": 1,
      "data.image_size": 64,
      **SCAN,
    },
  )
  loop.train_and_evaluate(
    config, str(workdir), pretrain.make_task(config, str(workdir)), devices=jax.devices()[:1]
  )
  return workdir


def _snapshot(path):
  """Every file under `path` with its bytes (empty when `path` does not exist)."""
  if not os.path.exists(path):
    return {}
  return {
    os.path.relpath(os.path.join(root, name), path): open(os.path.join(root, name), "rb").read()
    for root, _, names in os.walk(path)
    for name in names
  }


def _run(args, cwd=REPO, hf_home=None, **env_changes):
  env = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    XLA_FLAGS="--xla_force_host_platform_device_count=1",
    **env_changes,
  )
  env.pop("FCMAE_TRACEBACK", None)
  env.update(HF_HUB_OFFLINE="1")  # hf: sources read only the hub cache (HF_HOME): no network
  env.pop("HF_HUB_CACHE", None)
  if hf_home:
    env["HF_HOME"] = hf_home
  return subprocess.run(
    [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
  )


def _files(tmp_path):
  """Bad files for the weight and image readers: random bytes, a cut safetensors, no image."""
  rng = np.random.default_rng(0)
  (tmp_path / "random.pt").write_bytes(rng.integers(0, 256, 4096, np.uint8).tobytes())
  (tmp_path / "cut.safetensors").write_bytes(b"\xff" * 8 + b"{not json")
  (tmp_path / "not_an_image.jpg").write_bytes(b"plain text, no image")
  (tmp_path / "empty_folder" / "sub").mkdir(parents=True)
  (tmp_path / "empty_folder" / "notes.txt").write_text("no image here")
  (tmp_path / "unreadable" / "x").mkdir(parents=True)
  (tmp_path / "unreadable" / "x" / "a.jpg").write_bytes(b"plain text, no image")
  (tmp_path / "bands").mkdir()
  np.save(tmp_path / "bands" / "a.npy", np.zeros((8, 8, 5), np.uint8))
  bert = {"model_type": "bert", "architectures": ["BertForMaskedLM"]}
  write_repo(tmp_path / "hf" / "hub", "acme/bert-tiny", {"config.json": json_bytes(bert)})
  from safetensors.numpy import save_file

  save_file(
    {"bert.embeddings.word_embeddings.weight": np.zeros((8, 4), np.float32)},
    str(tmp_path / "bert.safetensors"),
  )
  return tmp_path


TRAIN = ["train.py", "--config", "configs/fcmae_demo.py"]
FINETUNE = ["finetune.py", "--config", "configs/finetune_demo.py"]


@pytest.fixture(scope="session")
def refusing_gcs():
  """A stand-in for GCS that refuses every request: 401 (no credentials) for the bucket
  refused-401, 403 (permission denied) for the others, as GCS words them."""

  class Refuse(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
      code = 401 if "refused-401" in self.path else 403
      who = "Anonymous caller" if code == 401 else "sa@project.iam.gserviceaccount.com"
      body = json.dumps(
        {"error": {"code": code, "message": f"{who} does not have storage.buckets.get access."}}
      ).encode()
      self.send_response(code)
      self.send_header("Content-Type", "application/json")
      self.send_header("Content-Length", str(len(body)))
      self.end_headers()
      self.wfile.write(body)

    do_POST = do_PUT = do_DELETE = do_HEAD = do_GET

    def log_message(self, *args):
      pass

  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  yield f"http://127.0.0.1:{server.server_address[1]}"
  server.shutdown()


# (id, arguments with {tmp} and {run} placeholders, words the message must contain)
CASES = [
  (
    "typo_in_a_field",
    TRAIN + ["--workdir", "{tmp}/w", "--config.batchsize=3"],
    ["no such config field", "batchsize", "batch_size", "configs.schema"],
  ),
  (
    "unknown_variant",
    TRAIN + ["--workdir", "{tmp}/w", "--config.model.variant=medium"],
    ["model.variant", "medium", "atto"],
  ),
  (
    "mask_ratio_out_of_range",
    TRAIN + ["--workdir", "{tmp}/w", "--config.fcmae.mask_ratio=1.5"],
    ["fcmae.mask_ratio", "1.5", "[0, 1)"],
  ),
  (
    "value_of_the_wrong_type",
    TRAIN + ["--workdir", "{tmp}/w", "--config.batch_size=many"],
    ["--config.batch_size", "many"],
  ),
  (
    "no_such_config_file",
    ["train.py", "--config", "configs/fcmae_giant.py", "--workdir", "{tmp}/w"],
    ["no such config file", "configs/fcmae_giant.py"],
  ),
  (
    "argument_for_a_config_without_one",
    ["train.py", "--config", "configs/fcmae_demo.py:800", "--workdir", "{tmp}/w"],
    ["configs/fcmae_demo.py takes no argument", "800"],
  ),
  (
    "unknown_finetuning_stage",
    ["finetune.py", "--config", "configs/finetune_base.py:in21k", "--workdir", "{tmp}/w"],
    ["in21k", "in22k_to_in1k"],
  ),
  (
    "in_chans_of_zero",
    TRAIN + ["--workdir", "{tmp}/w", "--config.model.in_chans=0"],
    ["--config.model.in_chans=0", "expected a positive integer"],
  ),
  (
    "image_size_not_a_multiple_of_32",
    TRAIN + ["--workdir", "{tmp}/w", "--config.data.image_size=100"],
    ["--config.data.image_size=100", "multiple of 32"],
  ),
  (
    "init_from_without_a_convnextv2_encoder",
    TRAIN + FAST + ["--workdir", "{tmp}/w", "--config.init_from={tmp}/bert.safetensors"],
    ["--config.init_from", "no ConvNeXt V2 encoder", "{tmp}/bert.safetensors", "bert.embeddings"],
  ),
  ("bucket_without_a_name", TRAIN + ["--workdir", "gs:///run"], ["gs:///run", "names no bucket"]),
  (
    "missing_bucket",
    TRAIN + ["--workdir", "gs://no-such-bucket/run"],
    ["--workdir", "gs://no-such-bucket does not exist", "emulator"],
  ),
  (
    "missing_bucket_as_init_from",
    FINETUNE + ["--workdir", "{tmp}/w", "--config.init_from=gs://no-such-bucket/run"],
    ["--config.init_from", "gs://no-such-bucket does not exist"],
  ),
  (
    "no_credentials_for_the_bucket",
    TRAIN + ["--workdir", "gs://refused-401/run"],
    ["gs://refused-401", "no usable credentials", "service account"],
  ),
  (
    "permission_denied_on_the_bucket",
    TRAIN + ["--workdir", "gs://refused-403/run"],
    ["gs://refused-403", "permission denied", "roles/storage.objectAdmin"],
  ),
  (
    "missing_image_folder",
    TRAIN + ["--workdir", "{tmp}/w", "--config.data.name=folder:{tmp}/nope"],
    ["{tmp}/nope", "does not exist"],
  ),
  (
    "empty_image_folder",
    TRAIN + ["--workdir", "{tmp}/w", "--config.data.name=folder:{tmp}/empty_folder"],
    ["{tmp}/empty_folder", "holds no image files"],
  ),
  (
    "no_readable_image_in_the_folder",
    TRAIN + ["--workdir", "{tmp}/w", "--config.data.name=folder:{tmp}/unreadable"],
    ["folder:{tmp}/unreadable", "could be read", "x/a.jpg"],
  ),
  (
    "npy_of_another_channel_count",
    TRAIN
    + [
      "--workdir",
      "{tmp}/w",
      "--config.data.name=folder:{tmp}/bands",
      "--config.model.in_chans=4",
    ],
    ["{tmp}/bands/a.npy", "5 channels", "model.in_chans=4"],
  ),
  (
    "imagenet_not_prepared",
    TRAIN
    + [
      "--workdir",
      "{tmp}/w",
      "--config.data.name=imagenet2012",
      "--config.data.data_dir={tmp}/tfds",
    ],
    ["imagenet2012", "not prepared", "downloads/manual", "tfds build"],
  ),
  ("unknown_topology", TRAIN + ["--compile_only=v9:2x2"], ["unknown topology", "v9:2x2", "v5e"]),
  (
    "missing_init_from",
    FINETUNE + ["--workdir", "{tmp}/w", "--config.init_from={tmp}/nothing"],
    ["init_from", "{tmp}/nothing", "does not exist"],
  ),
  (
    "random_bytes_as_init_from",
    FINETUNE + ["--workdir", "{tmp}/w", "--config.init_from={tmp}/random.pt"],
    ["{tmp}/random.pt", "not a PyTorch checkpoint"],
  ),
  (
    "random_bytes_to_convert",
    ["-m", "models.convert", "{tmp}/random.pt", "{tmp}/out"],
    ["{tmp}/random.pt", "not a PyTorch checkpoint"],
  ),
  (
    "cut_safetensors_to_convert",
    ["-m", "models.convert", "{tmp}/cut.safetensors", "{tmp}/out"],
    ["{tmp}/cut.safetensors", "not a readable safetensors file"],
  ),
  (
    "hub_weights_offline_and_not_cached",
    ["-m", "models.convert", "hf:facebook/convnextv2-atto-1k-224", "{tmp}/out"],
    [
      "hf:facebook/convnextv2-atto-1k-224",
      "HF_HUB_OFFLINE=1",
      "needs a cached copy",
      "hf download",
    ],
  ),
  (
    "hub_revision_not_cached",
    FINETUNE + ["--workdir", "{tmp}/w", "--config.init_from=hf:timm/convnextv2_atto.fcmae@v9"],
    ["hf:timm/convnextv2_atto.fcmae@v9", "not in the local Hugging Face cache", "--revision v9"],
  ),
  (
    "hub_repository_of_another_model",
    ["-m", "fcmae.probe", "--checkpoint", "hf:acme/bert-tiny", "--data", "demo"],
    ["hf:acme/bert-tiny", "holds no ConvNeXt V2 weights", "'bert' model (BertForMaskedLM)"],
  ),
  (
    "hub_name_that_is_no_repository",
    ["-m", "models.convert", "hf:acme/a/b", "{tmp}/out"],
    ["hf:acme/a/b", "is not hf:REPO[@REVISION]"],
  ),
  (
    "pictures_of_a_directory_without_a_run",
    ["-m", "fcmae.visualize", "--checkpoint", "{tmp}"],
    ["config.json", "{tmp}", "--checkpoint takes a train.py workdir"],
  ),
  (
    "pictures_of_a_file_that_is_no_image",
    [
      "-m",
      "fcmae.visualize",
      "--checkpoint",
      "{run}",
      "--images",
      "{tmp}/not_an_image.jpg",
      "--out",
      "{tmp}/r.png",
    ],
    ["Cannot read image", "{tmp}/not_an_image.jpg"],
  ),
  (
    "resume_with_another_variant",
    TRAIN + FAST + ["--workdir", "{run}", "--config.model.variant=femto"],
    ["{run}", "model.variant: 'atto' -> 'femto'", "--allow_config_change"],
  ),
  (
    "resume_with_another_batch",
    TRAIN
    + [
      "--workdir",
      "{run}",
      "--config.batch_size=32",
      "--config.total_steps=2",
      "--config.mesh.data=1",
    ],
    ["batch_size: 16 -> 32", "warmup_steps: 1 -> 20"],
  ),
]


# The cases that resume the trained workdir share it: one worker runs them (--dist loadgroup).
_RUN = pytest.mark.xdist_group("trained_workdir")


@pytest.mark.parametrize(
  "case, args, words",
  [pytest.param(*c, id=c[0], marks=[_RUN] if "{run}" in " ".join(c[1]) else []) for c in CASES],
)
def test_a_bad_input_is_one_message_and_changes_nothing(case, args, words, tmp_path, request):
  run = ""
  if "{run}" in " ".join(args):
    original = request.getfixturevalue("trained")
    run = str(tmp_path / "run")
    shutil.copytree(original, run)
  env = {}
  if "gs://refused" in " ".join(args):
    env["STORAGE_EMULATOR_HOST"] = request.getfixturevalue("refusing_gcs")
  elif "gs://no-such" in " ".join(args):
    request.getfixturevalue("gcs")  # the emulator, which has no such bucket
  _files(tmp_path)
  fill = lambda text: text.replace("{tmp}", str(tmp_path)).replace("{run}", run)
  before = _snapshot(str(tmp_path))
  result = _run([fill(a) for a in args], hf_home=str(tmp_path / "hf"), **env)
  message = result.stderr.strip()
  assert result.returncode == 2, (case, result.returncode, result.stdout[-2000:], message[-3000:])
  assert "Traceback" not in message, message[-3000:]
  error_lines = [line for line in message.splitlines() if line.startswith("error: ")]
  assert len(error_lines) == 1, message[-3000:]
  for word in words:
    assert fill(word) in error_lines[0], (word, error_lines[0])
  assert _snapshot(str(tmp_path)) == before  # nothing written, nothing removed, no stub workdir


def test_the_design_cards_command_needs_no_workdir_and_says_how_to_get_imagenet(tmp_path):
  """`python train.py --config configs/fcmae_base.py` as the design card gives it: the first line
  names the default workdir (runs/fcmae_base), and the run stops at one line saying that ImageNet
  is not prepared, how to prepare it, and how to use a folder instead; nothing is written."""
  args = [os.path.join(REPO, "train.py"), "--config", os.path.join(REPO, "configs/fcmae_base.py")]
  result = _run(args, cwd=str(tmp_path), TFDS_DATA_DIR=str(tmp_path / "tfds"))
  assert result.returncode == 2, result.stderr[-3000:]
  assert result.stdout.splitlines()[0].startswith("Workdir runs/fcmae_base (the default"), (
    result.stdout
  )
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1, result.stderr[-3000:]
  for words in ("imagenet2012", "not prepared", "tfds build", "--config.data.name=folder:DIR"):
    assert words in errors[0], (words, errors[0])
  assert os.listdir(tmp_path) == []


@_RUN
def test_a_finished_run_says_so_and_how_to_extend_it(trained, tmp_path):
  run = tmp_path / "run"
  shutil.copytree(trained, run)
  before = _snapshot(str(run / "checkpoints"))
  result = _run(TRAIN + FAST + ["--workdir", str(run)])
  assert result.returncode == 0, result.stderr[-3000:]
  assert "is finished: step 2 of 2" in result.stdout and "--config.total_steps" in result.stdout
  assert _snapshot(str(run / "checkpoints")) == before


@_RUN
def test_a_changed_config_is_taken_with_allow_config_change_and_kept_in_the_history(
  trained, tmp_path
):
  run = tmp_path / "run"
  shutil.copytree(trained, run)
  old = (run / "config.json").read_text()
  result = _run(
    TRAIN
    + FAST
    + [
      "--workdir",
      str(run),
      "--config.optim.base_lr=0.001",
      "--config.log_every_steps=1",
      "--allow_config_change",
    ]
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "optim.base_lr: 0.006 -> 0.001" in result.stdout
  assert "log_every_steps: 20 -> 1" in result.stdout  # said, and allowed anyway
  assert (run / "config.2.json").read_text() == old  # the config of steps 1..2
  assert '"base_lr": 0.001' in (run / "config.json").read_text()
