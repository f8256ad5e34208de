"""The input pipeline: sources, the built-in demo data, tf.data iterators and augmentations."""
