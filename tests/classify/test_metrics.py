"""classify/metrics.py: soft-target cross-entropy against PyTorch, top-k against NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from classify import metrics

K = 10


def test_soft_cross_entropy_matches_torch():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(16, K)).astype(np.float32) * 3
  targets = rng.dirichlet(np.ones(K), size=16).astype(np.float32)
  got = np.asarray(metrics.soft_cross_entropy(jnp.asarray(logits), jnp.asarray(targets)))
  want = torch.nn.functional.cross_entropy(
    torch.from_numpy(logits), torch.from_numpy(targets), reduction="none"
  ).numpy()
  assert got.shape == (16,)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # hard one-hot targets reduce to the ordinary cross-entropy; bf16 logits are upcast
  labels = rng.integers(0, K, size=16)
  got = np.asarray(metrics.soft_cross_entropy(jnp.asarray(logits), jax.nn.one_hot(labels, K)))
  want = torch.nn.functional.cross_entropy(
    torch.from_numpy(logits), torch.from_numpy(labels), reduction="none"
  ).numpy()
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  out = metrics.soft_cross_entropy(jnp.asarray(logits, jnp.bfloat16), jnp.asarray(targets))
  assert out.dtype == jnp.float32


def test_topk_correct_matches_numpy_argsort():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(64, K)).astype(np.float32)
  labels = rng.integers(0, K, size=64).astype(np.int32)
  order = np.argsort(-logits, axis=-1)
  for k in (1, 3, 5):
    want = (order[:, :k] == labels[:, None]).any(-1).astype(np.float32)
    got = np.asarray(metrics.topk_correct(jnp.asarray(logits), jnp.asarray(labels), k))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    assert 0 < want.sum() < 64
  np.testing.assert_array_equal(
    np.asarray(metrics.topk_correct(jnp.asarray(logits), jnp.asarray(labels), K + 5)), 1.0
  )
