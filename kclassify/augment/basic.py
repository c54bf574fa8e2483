"""Translation and horizontal flip on uint8 batches, a fresh draw for every image.

Keras' RandomCrop uses one offset for a whole batch (see FACTS.md); these draw per image but run
on the whole batch at once (two gathers), which is faster than mapping over single images.
"""
import tensorflow as tf

from kclassify.augment.registry import chain, compose


def translate_batch(images, pad, mode="reflect"):
    """Pad by `pad` pixels on each side (reflect or zero), then take a random window of the
    original size per image: translations of up to +-pad pixels, as in the CIFAR papers."""
    shape = tf.shape(images)
    n, h, w = shape[0], images.shape[1], images.shape[2]
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT" if mode == "reflect" else "CONSTANT")
    dy = tf.random.uniform([n], 0, 2 * pad + 1, tf.int32)
    dx = tf.random.uniform([n], 0, 2 * pad + 1, tf.int32)
    rows = dy[:, None] + tf.range(h)[None, :]
    cols = dx[:, None] + tf.range(w)[None, :]
    padded = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(padded, cols, axis=2, batch_dims=1)


def flip_batch(images, mask):
    """Mirror the images where `mask` (one bool per image) is true."""
    return tf.where(mask[:, None, None, None], tf.reverse(images, axis=[2]), images)


def batch_augmenter(cfg, flip=True):
    """A function of uint8 NHWC batches for the AugmentConfig (translation, a random flip when
    cfg.flip is true and `flip`, then the registered ops), or None when nothing is on. The
    training stream applies the flip itself (it also knows the alternating scheme)."""
    ops = []
    if cfg.crop_pad:
        ops.append(lambda x: translate_batch(x, cfg.crop_pad, cfg.pad_mode))
    if flip and cfg.flip is True:
        ops.append(lambda x: flip_batch(x, tf.random.uniform([tf.shape(x)[0]]) < 0.5))
    registered = chain([(op["name"], {k: v for k, v in op.items() if k != "name"}) for op in cfg.ops])
    if registered is not None:
        ops.append(registered)
    return compose(ops)


image_augmenter = batch_augmenter  # the name tests and tools knew
