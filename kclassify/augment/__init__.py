"""Augmentation that runs inside tf.data, random per image (before batching)."""
from kclassify.augment.basic import image_augmenter  # noqa: F401
