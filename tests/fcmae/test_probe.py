"""fcmae/probe.py: the kNN and ridge probes against plain NumPy computations on fixed features,
every validation image counted once whatever the batch, the monitors in a pretraining run (at
step 0 and at the end), and the command on that run's checkpoint giving the same figures."""

import jax
import numpy as np
import pytest

from configs import fcmae_demo
from core import logs, sharding
from data import demo
from fcmae import pretrain, probe
from models import convnextv2
from tests.helpers import SCAN, override
from trainer import loop


def _clusters(n, classes=4, dim=8, noise=0.8, seed=0):
  """Noisy points around fixed class centres (the same centres for every seed)."""
  centres = np.random.default_rng(123).normal(size=(classes, dim)) * 2
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, classes, n)
  return (centres[labels] + noise * rng.normal(size=(n, dim))).astype(np.float32), labels


def test_knn_is_the_weighted_vote_of_the_k_most_similar():
  train_x, train_y = _clusters(300, noise=2.5)
  val_x, val_y = _clusters(101, seed=1, noise=2.5)
  k, temperature = 7, 0.1
  correct = 0
  for x, y in zip(val_x, val_y):  # one query at a time, by sorting
    sims = np.array([x @ t / np.linalg.norm(x) / np.linalg.norm(t) for t in train_x])
    top = np.argsort(-sims)[:k]
    votes = np.zeros(4)
    for i in top:
      votes[train_y[i]] += np.exp(sims[i] / temperature)
    correct += votes.argmax() == y
  expected = 100.0 * correct / len(val_y)
  assert 40 < expected < 100  # neither trivial nor hopeless
  got = probe.knn_top1(train_x, train_y, val_x, val_y, 4, k=k, temperature=temperature, chunk=16)
  assert got == pytest.approx(expected)


def test_ridge_probe_solves_the_regularised_least_squares_and_picks_l2_on_held_out_data():
  train_x, train_y = _clusters(250, noise=1.6)
  val_x, val_y = _clusters(90, seed=2, noise=1.6)
  mean, std = train_x.mean(0), train_x.std(0) + 1e-6
  design = lambda x: np.hstack([(x - mean) / std, np.ones((len(x), 1))])
  onehot = np.eye(4)[train_y]

  def fit(x, y, l2):  # the same minimiser, as an augmented least-squares problem
    a = np.vstack([x, np.sqrt(l2) * np.eye(x.shape[1])])
    b = np.vstack([y, np.zeros((x.shape[1], y.shape[1]))])
    return np.linalg.lstsq(a, b, rcond=None)[0]

  grid = (1e-3, 1.0, 100.0)
  held = np.arange(250) % 5 == 0
  scores = [
    np.mean(
      (
        design(train_x[held]) @ fit(design(train_x[~held]), onehot[~held], l2 * (~held).sum())
      ).argmax(1)
      == train_y[held]
    )
    for l2 in grid
  ]
  l2 = grid[int(np.argmax(scores))]
  expected = 100 * np.mean(
    (design(val_x) @ fit(design(train_x), onehot, l2 * 250)).argmax(1) == val_y
  )
  got, chosen = probe.ridge_top1(train_x, train_y, val_x, val_y, 4, l2_grid=grid)
  assert chosen == l2 and got == pytest.approx(expected)


def test_every_validation_image_counts_once_whatever_the_batch():
  settings = probe.Settings("demo", None, 32, train_examples=50, batch_size=64)  # 240 % 64 != 0
  monitor = probe.Monitor(settings, "atto")
  mesh = sharding.make_mesh(-1, 1)  # the 8 test devices
  _, params = convnextv2.build("atto", num_classes=0)
  params = jax.device_put(params, sharding.replicated(mesh))
  x, y = monitor.features(params, "validation")
  assert x.shape == (240, 320) and np.array_equal(np.sort(y), np.sort(demo.arrays("val")[1]))
  train_x, _ = monitor.features(params, "train[:50]")
  assert len(train_x) == 50


# The two tests that read one monitored run share it: one worker runs them (--dist loadgroup).
_RUN = pytest.mark.xdist_group("monitored_run")


@pytest.fixture(scope="session")  # made once per worker, whatever the order
def monitored_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("monitored")
  config = override(
    fcmae_demo.get_config(),
    {
      "data.image_size": 64,
      "batch_size": 16,
      "total_steps": 4,
      "warmup_steps": 1,
      "checkpoint_every_steps": 4,
      "eval_every_steps": 4,
      "probe.train_examples": 240,
      "mesh.data": 1,
      **SCAN,
    },
  )
  loop.train_and_evaluate(
    config, str(workdir), pretrain.make_task(config, str(workdir)), devices=jax.devices()[:1]
  )
  return workdir


@_RUN
def test_pretraining_logs_the_monitors_at_the_start_and_at_each_evaluation(monitored_run):
  rows = [r for r in logs.read_metrics(str(monitored_run)) if "knn_top1" in r]
  assert [r["step"] for r in rows] == [0, 4]
  for r in rows:
    assert r["num_examples"] == 240 and 0 <= r["knn_top1"] <= 100 and 0 <= r["linear_top1"] <= 100
    assert r["knn_top1"] > 100 / 12  # better than chance, even at initialisation
  assert (monitored_run / "reconstructions" / "step_0000000.png").is_file()


@_RUN
def test_the_probe_command_on_the_run_gives_the_figures_it_logged(monitored_run, capsys):
  logged = [r for r in logs.read_metrics(str(monitored_run)) if "knn_top1" in r][-1]
  result = probe.main(
    [
      "--checkpoint",
      str(monitored_run),
      "--data",
      "demo",
      "--image_size",
      "64",
      "--train_examples",
      "240",
      "--batch_size",
      "64",
    ]
  )
  assert "knn_top1" in capsys.readouterr().out
  assert result["num_examples"] == 240
  assert result["knn_top1"] == pytest.approx(logged["knn_top1"], abs=0.5)
  assert result["linear_top1"] == pytest.approx(logged["linear_top1"], abs=0.5)
