"""fcmae/visualize.py: the reconstruction figure maps predictions back to pixels."""

import jax
import numpy as np

from fcmae import masking, visualize


def _numpy_loss_target(images):
  b = images.shape[0]
  h = images.shape[1] // 32
  target = images.reshape(b, h, 32, h, 32, 3).transpose(0, 1, 3, 2, 4, 5).reshape(b, h * h, 3072)
  mean = target.mean(-1, keepdims=True)
  return (target - mean) / np.sqrt(target.var(-1, ddof=1, keepdims=True) + 1e-6)


def test_reconstruction_grid_undoes_the_per_patch_normalization():
  images = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)
  mask = np.asarray(masking.random_mask(jax.random.key(9), 2, 4, 0.5))
  # A perfect prediction of the norm-pix targets reproduces the image in every column but the
  # masked input's grey patches.
  perfect = _numpy_loss_target(images)
  picture = visualize.reconstruction_grid(images, perfect, mask, norm_pix_loss=True)
  assert picture.shape == (2 * 64, 4 * 64, 3) and picture.dtype == np.uint8
  original, masked, recon, pasted = (
    picture[:64, 64 * i : 64 * (i + 1)].astype(int) for i in range(4)
  )
  assert np.abs(recon - original).max() <= 1 and np.abs(pasted - original).max() <= 1
  pixel_mask = np.repeat(np.repeat(mask.reshape(2, 2, 2), 32, axis=1), 32, axis=2)[0]
  assert np.all(masked[pixel_mask > 0] == 128)
  assert np.array_equal(masked[pixel_mask == 0], original[pixel_mask == 0])
