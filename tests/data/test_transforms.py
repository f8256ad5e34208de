"""data/transforms.py: every recipe gives a finite, normalised image of the asked size."""

import numpy as np

from data import pipeline, transforms
from tests.data.helpers import S, rand_image, seed


def test_train_transforms_keep_shape_and_finite_values():
  image = rand_image(45, 70, seed=4)
  for augment, options in [('pretrain', None), ('finetune', None),
                           ('finetune', {'randaugment': '', 'reprob': 0.0}), ('none', None)]:
    fn = transforms.build_train_transform(augment, S, options)
    for i in range(3):
      out = fn(image, seed(i)).numpy()
      assert out.shape == (S, S, 3) and out.dtype == np.float32 and np.isfinite(out).all()
  it = pipeline.train_iterator('demo', image_size=S, local_batch_size=8, seed=0, augment='finetune',
                        augment_options={'randaugment': 'rand-m9-mstd0.5-inc1', 'reprob': 0.25})
  batch = next(it)
  assert batch['image'].shape == (8, S, S, 3) and np.isfinite(batch['image']).all()
