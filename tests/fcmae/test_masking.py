"""fcmae/masking.py: exactly len_keep visible patches per sample, uniformly chosen; clear errors."""

import jax
import numpy as np
import pytest

from fcmae import masking


@pytest.mark.parametrize(
  "num_patches, ratio, keep",
  [(49, 0.6, 19), (9, 0.6, 3), (4, 0.6, 1), (144, 0.75, 36), (49, 0.0, 49)],
)
def test_mask_keeps_exactly_len_keep_per_sample(num_patches, ratio, keep):
  mask = np.asarray(masking.random_mask(jax.random.key(0), 64, num_patches, ratio))
  assert mask.shape == (64, num_patches) and set(np.unique(mask)) <= {0.0, 1.0}
  np.testing.assert_array_equal((1 - mask).sum(axis=1), keep)


def test_masks_are_uniform_over_patches_and_differ_per_sample():
  mask = np.asarray(masking.random_mask(jax.random.key(1), 4000, 49, 0.6))
  assert len({m.tobytes() for m in mask[:50]}) == 50
  frequency = mask.mean(axis=0)
  np.testing.assert_allclose(frequency, 30 / 49, atol=0.03)


def test_bad_sizes_and_ratios_are_clear_errors():
  with pytest.raises(ValueError, match="not divisible by the patch size 32"):
    masking.grid_shape(200)
  with pytest.raises(ValueError, match="mask_ratio"):
    masking.random_mask(jax.random.key(0), 2, 49, 1.0)
  with pytest.raises(ValueError, match="leaves no visible patch"):
    masking.len_keep(4, 0.9)
