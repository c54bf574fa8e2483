"""Per-image crop-with-padding and horizontal flip with tf.image.

Keras' RandomCrop uses one offset for a whole batch (see FACTS.md), so these run per image,
before `.batch()`, drawing fresh randomness for every image.
"""
import tensorflow as tf


def pad_crop(image, pad, mode="reflect"):
    """Pad by `pad` pixels on each side (reflect or zero), then crop a random window of the
    original size: translations of up to +-pad pixels, as in the CIFAR papers."""
    h, w, c = image.shape
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]], mode="REFLECT" if mode == "reflect" else "CONSTANT")
    return tf.image.random_crop(padded, [h, w, c])


def image_augmenter(cfg):
    """A function uint8 HWC -> uint8 HWC for the AugmentConfig, or None when nothing is on."""
    ops = []
    if cfg.crop_pad:
        ops.append(lambda x: pad_crop(x, cfg.crop_pad, cfg.pad_mode))
    if cfg.flip:
        ops.append(tf.image.random_flip_left_right)
    return compose(ops)


def compose(fns):
    """One function applying `fns` in order; None when there are none."""
    if not fns:
        return None

    def apply(image):
        for fn in fns:
            image = fn(image)
        return image

    return apply
