"""Resize policies and random-resized-crop as TensorFlow functions on one uint8 HxWxC image of
any size (the streamed pipeline brings stored images to the training size with these).

`resize` is the tf.data twin of kitlib.resize_image (the decoder's PIL version): the same boxes,
bilinear with antialiasing (PIL's bilinear widens its filter when it shrinks; so does this), so
the two differ only by rounding (tests/test_decode.py measures it on real photos).
"""
import math

import tensorflow as tf

PAD_VALUE = 0  # as kitlib.PAD_VALUE: black letterbox bars


def _to_uint8(x):
    return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)


def _bilinear(image, height, width):
    return _to_uint8(tf.image.resize(image, tf.stack([height, width]), method="bilinear", antialias=True))


def _half_up(x):
    return tf.cast(tf.floor(x + 0.5), tf.int32)


def resize(image, size, policy="crop"):
    """uint8 (H, W, C) -> uint8 (size, size, C): "crop" scales the shorter side to `size` and cuts
    the center, "squash" stretches, "pad" scales the longer side to `size` and letterboxes.
    An image already at the size comes back unchanged."""
    if policy not in ("crop", "squash", "pad"):
        raise ValueError(f"unknown resize policy {policy!r}")
    channels = image.shape[-1]
    shape = tf.shape(image)
    h, w = shape[0], shape[1]

    def squash():
        return _bilinear(image, size, size)

    def crop():
        scale = size / tf.cast(tf.minimum(h, w), tf.float32)
        nh = tf.maximum(_half_up(tf.cast(h, tf.float32) * scale), size)
        nw = tf.maximum(_half_up(tf.cast(w, tf.float32) * scale), size)
        big = _bilinear(image, nh, nw)
        return big[(nh - size) // 2:(nh - size) // 2 + size, (nw - size) // 2:(nw - size) // 2 + size]

    def pad():
        scale = size / tf.cast(tf.maximum(h, w), tf.float32)
        nh = tf.clip_by_value(_half_up(tf.cast(h, tf.float32) * scale), 1, size)
        nw = tf.clip_by_value(_half_up(tf.cast(w, tf.float32) * scale), 1, size)
        top, left = (size - nh) // 2, (size - nw) // 2
        return tf.pad(_bilinear(image, nh, nw), [[top, size - nh - top], [left, size - nw - left], [0, 0]],
                      constant_values=PAD_VALUE)

    fn = {"squash": squash, "crop": crop, "pad": pad}[policy]
    out = tf.cond((h == size) & (w == size), lambda: image, fn)
    return tf.ensure_shape(out, [size, size, channels])


def crop_box(height, width, scale, ratio, seed, attempts=10):
    """(top, left, crop height, crop width) of an Inception-style random crop, as timm's
    RandomResizedCrop.get_params: up to `attempts` draws of an area (uniform in `scale` times the
    image area) and an aspect ratio (log-uniform in `ratio`); the first that fits wins, at a
    uniform offset. If none fits: the center crop of the whole image, its aspect clamped to
    `ratio`. `seed` is a stateless seed (shape [2]): the same seed gives the same box."""
    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    draw_seed, offset_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    u = tf.random.stateless_uniform([attempts, 2], seed=draw_seed)
    area = h * w * (scale[0] + (scale[1] - scale[0]) * u[:, 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = tf.exp(log_lo + (log_hi - log_lo) * u[:, 1])
    cw = _half_up(tf.sqrt(area * aspect))
    ch = _half_up(tf.sqrt(area / aspect))
    fits = (cw > 0) & (cw <= width) & (ch > 0) & (ch <= height)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
    found = tf.reduce_any(fits)
    # fallback: the whole image, its aspect clamped into the ratio range
    in_ratio = w / h
    fw = tf.where(in_ratio < ratio[0], width, tf.where(in_ratio > ratio[1], _half_up(h * ratio[1]), width))
    fh = tf.where(in_ratio < ratio[0], _half_up(w / ratio[0]), height)
    fw, fh = tf.clip_by_value(fw, 1, width), tf.clip_by_value(fh, 1, height)
    ch = tf.where(found, ch[first], fh)
    cw = tf.where(found, cw[first], fw)
    v = tf.random.stateless_uniform([2], seed=offset_seed)
    top = tf.where(found, tf.cast(v[0] * tf.cast(height - ch + 1, tf.float32), tf.int32), (height - ch) // 2)
    left = tf.where(found, tf.cast(v[1] * tf.cast(width - cw + 1, tf.float32), tf.int32), (width - cw) // 2)
    return tf.minimum(top, height - ch), tf.minimum(left, width - cw), ch, cw


def random_resized_crop(image, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), seed=(0, 0), attempts=10):
    """uint8 (H, W, C) of any size -> uint8 (size, size, C): a crop_box of the image as stored,
    resized (bilinear, antialiased) to size x size. Deterministic in `seed` (shape [2])."""
    shape = tf.shape(image)
    top, left, ch, cw = crop_box(shape[0], shape[1], scale, ratio, tf.convert_to_tensor(seed, tf.int64), attempts)
    window = image[top:top + ch, left:left + cw]
    return tf.ensure_shape(_bilinear(window, size, size), [size, size, image.shape[-1]])
