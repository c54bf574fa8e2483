"""The plain image ops of AutoAugment and RandAugment on uint8 images (C = 1 or 3).

Every op takes one image HxWxC or a batch BxHxWxC; on a batch each image draws its own random
sign and may have its own level (a scalar or a [B] vector). Written with tf ops only (no PIL,
no py_function), so they run eagerly and inside `dataset.map`, before or after `.batch()`.
Each op in `OPS` has the signature `op(images, level)` with `level` in 0..10 (the AutoAugment
convention). `apply_op` (one image: tf.switch_case) and `apply_ops` (a batch: each op on the
images that drew it, via dynamic_partition) compute only the ops that were drawn.

Level -> magnitude follows the reference implementation of the AutoAugment authors
(tensorflow/models research/autoaugment, PARAMETER_MAX = 10): shear 0.3 * level/10,
translate 10 px of a 32 px image (scaled to the image size), rotate 30 degrees, solarize
threshold 256 - 256 * level/10, enhancement factor 0.1 + 1.8 * level/10 (Color, Contrast,
Brightness, Sharpness). Shear, translate and rotate take a random sign. Posterize keeps
8 - 4 * level/10 bits: the paper's stated range [4, 8] (the reference code's 4 - level bits
blacks the image out at high levels). Pixel ops match PIL (checked against it in the tests).
"""
import functools
import math

import tensorflow as tf

MAX_LEVEL = 10.0
TRANSLATE_MAX = 10 / 32  # of the image side: 10 px on CIFAR's 32 px, as in the reference code
FILL = 128  # gray fill for pixels that affine ops move in (PIL-based ports use 128)


def batched(fn):
    """Let a batch op (BxHxWxC) also take one HxWxC image."""

    @functools.wraps(fn)
    def wrapper(images, *args, **kwargs):
        images = tf.convert_to_tensor(images)
        if images.shape.rank == 3:
            return fn(images[None], *args, **kwargs)[0]
        return fn(images, *args, **kwargs)

    return wrapper


def to_float(images):
    return tf.cast(images, tf.float32)


def to_uint8(x):
    return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)


def channels(images):
    """Static channel count: ops branch on it in Python (gray images skip color ops)."""
    c = images.shape[-1]
    if c not in (1, 3):
        raise ValueError(f"images need 1 or 3 channels with a static shape, got shape {images.shape}")
    return c


def per_image(value, images):
    """A scalar or [B] value as a float [B] vector, one entry per image of the batch."""
    return tf.broadcast_to(tf.cast(value, tf.float32), tf.shape(images)[:1])


def pixelwise(v):
    """[B] -> [B, 1, 1, 1], to broadcast against images."""
    return tf.reshape(v, [-1, 1, 1, 1])


def random_sign(x):
    return tf.where(tf.random.uniform(tf.shape(x)) < 0.5, -x, x)


def blend(degenerate, images, factor):
    """PIL's ImageEnhance: degenerate + factor * (image - degenerate); factor > 1 extrapolates.
    `factor`: [B] or scalar (a scalar for one HxWxC image)."""
    d = to_float(degenerate)
    f = tf.cast(factor, tf.float32) if images.shape.rank == 3 else pixelwise(per_image(factor, images))
    return to_uint8(d + f * (to_float(images) - d))


@batched
def gray(images):
    """Luma (ITU-R 601, as PIL's convert("L")) with the input's channel count; a no-op on gray."""
    if channels(images) == 1:
        return images
    return to_uint8(tf.tile(tf.image.rgb_to_grayscale(to_float(images)), [1, 1, 1, 3]))


# ---- affine ops: one ImageProjectiveTransformV3 call per batch ----

@batched
def transform(images, matrices, fill=FILL, interpolation="NEAREST", fill_mode="CONSTANT"):
    """Warp image b by the 8-number projective matrices[b] (output (x, y) -> input coords)."""
    matrices = tf.broadcast_to(tf.cast(matrices, tf.float32), tf.stack([tf.shape(images)[0], 8]))
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=matrices, output_shape=tf.shape(images)[1:3],
        fill_value=tf.cast(fill, tf.float32), interpolation=interpolation, fill_mode=fill_mode)
    return tf.ensure_shape(out, images.shape)


def _affine(images, a0, a1, a2, b0, b1, b2):
    """[B, 8] projective matrices from entries that are scalars or [B] vectors."""
    parts = [per_image(p, images) for p in (a0, a1, a2, b0, b1, b2, 0.0, 0.0)]
    return tf.stack(parts, axis=1)


@batched
def rotate_degrees(images, degrees, fill=FILL, interpolation="NEAREST", fill_mode="CONSTANT"):
    """Rotate image b by degrees[b] (or a shared scalar) about its center."""
    h = tf.cast(tf.shape(images)[1], tf.float32) - 1.0
    w = tf.cast(tf.shape(images)[2], tf.float32) - 1.0
    a = per_image(degrees, images) * (math.pi / 180.0)
    cos, sin = tf.cos(a), tf.sin(a)
    dx = (w - (cos * w - sin * h)) / 2.0
    dy = (h - (sin * w + cos * h)) / 2.0
    return transform(images, _affine(images, cos, -sin, dx, sin, cos, dy), fill, interpolation, fill_mode)


def _magnitude(images, level, top):
    """Level 0..10 -> top * level/10 with a random sign, per image."""
    return random_sign(per_image(level, images) * (top / MAX_LEVEL))


def _pixels(images, level, axis):
    side = tf.cast(tf.shape(images)[axis], tf.float32)
    return tf.round(_magnitude(images, level, TRANSLATE_MAX * side))


@batched
def shear_x(images, level, fill=FILL):
    return transform(images, _affine(images, 1.0, _magnitude(images, level, 0.3), 0.0, 0.0, 1.0, 0.0), fill)


@batched
def shear_y(images, level, fill=FILL):
    return transform(images, _affine(images, 1.0, 0.0, 0.0, _magnitude(images, level, 0.3), 1.0, 0.0), fill)


@batched
def translate_x(images, level, fill=FILL):
    return transform(images, _affine(images, 1.0, 0.0, _pixels(images, level, 2), 0.0, 1.0, 0.0), fill)


@batched
def translate_y(images, level, fill=FILL):
    return transform(images, _affine(images, 1.0, 0.0, 0.0, 0.0, 1.0, _pixels(images, level, 1)), fill)


@batched
def rotate(images, level, fill=FILL):
    return rotate_degrees(images, _magnitude(images, level, 30.0), fill)


# ---- pixel ops ----

def identity(images, level=None):
    return tf.convert_to_tensor(images)


def invert(images, level=None):
    return 255 - tf.convert_to_tensor(images)


@batched
def solarize_threshold(images, threshold):
    """Invert every pixel at or above the image's threshold (0..256; 256 leaves it as is)."""
    x = tf.cast(images, tf.int32)
    t = tf.cast(pixelwise(per_image(threshold, images)), tf.int32)
    return tf.cast(tf.where(x < t, x, 255 - x), tf.uint8)


def solarize(images, level):
    return solarize_threshold(images, 256.0 - tf.floor(256.0 * tf.cast(level, tf.float32) / MAX_LEVEL))


@batched
def posterize_bits(images, bits):
    """Keep the `bits` high bits of every value (bits: scalar or one per image)."""
    shift = tf.cast(pixelwise(8.0 - per_image(bits, images)), tf.uint8)
    return tf.bitwise.left_shift(tf.bitwise.right_shift(images, shift), shift)


def posterize(images, level):
    return posterize_bits(images, 8.0 - tf.floor(4.0 * tf.cast(level, tf.float32) / MAX_LEVEL))


@batched
def autocontrast(images, level=None):
    """Stretch each channel to 0..255; a flat channel stays as it is (as PIL)."""
    x = to_float(images)
    lo = tf.reduce_min(x, axis=[1, 2], keepdims=True)
    hi = tf.reduce_max(x, axis=[1, 2], keepdims=True)
    stretched = tf.floor((x - lo) * (255.0 / tf.maximum(hi - lo, 1.0)))
    return to_uint8(tf.where(hi > lo, stretched, x))


@batched
def equalize(images, level=None):
    """PIL's ImageOps.equalize per image and channel, from one bincount over the batch."""
    c = channels(images)
    b, pixels = tf.shape(images)[0], tf.shape(images)[1] * tf.shape(images)[2]
    x = tf.reshape(tf.cast(images, tf.int32), [b, pixels, c])
    offsets = tf.reshape(tf.range(b * c) * 256, [b, 1, c])  # (image, channel) k counts into bins 256k..
    flat = tf.reshape(x + offsets, [-1])
    hist = tf.reshape(tf.math.bincount(flat, minlength=b * c * 256, maxlength=b * c * 256), [-1, 256])
    last = 255 - tf.argmax(tf.reverse(tf.cast(hist > 0, tf.int32), [1]), axis=1, output_type=tf.int32)
    step = (pixels - tf.gather(hist, last, batch_dims=1)) // 255  # PIL ignores the top occupied bin
    safe = tf.maximum(step, 1)[:, None]
    lut = (tf.cumsum(hist, axis=1, exclusive=True) + safe // 2) // safe
    mapped = tf.reshape(tf.gather(tf.reshape(tf.minimum(lut, 255), [-1]), flat), [b, pixels, c])
    out = tf.where(tf.reshape(step > 0, [b, 1, c]), mapped, x)  # a single-valued channel stays
    return tf.reshape(tf.cast(out, tf.uint8), tf.shape(images))


def _factor(level):
    return 0.1 + 1.8 * tf.cast(level, tf.float32) / MAX_LEVEL


@batched
def adjust_contrast(images, factor):
    """Blend with each image's mean gray level (PIL's Contrast: mean of the L histogram)."""
    mean = tf.round(tf.reduce_mean(to_float(gray(images)[..., :1]), axis=[1, 2, 3], keepdims=True))
    return blend(tf.broadcast_to(mean, tf.shape(images)), images, factor)


@batched
def adjust_brightness(images, factor):
    return blend(tf.zeros_like(images), images, factor)


@batched
def adjust_saturation(images, factor):
    return blend(gray(images), images, factor)  # gray images: gray(images) is images, a no-op


def color(images, level):
    return adjust_saturation(images, _factor(level))


def contrast(images, level):
    return adjust_contrast(images, _factor(level))


def brightness(images, level):
    return adjust_brightness(images, _factor(level))


@batched
def smooth(images):
    """PIL's SMOOTH filter (3x3, center weight 5, /13), border pixels unchanged."""
    x = to_float(images)
    box = tf.nn.avg_pool2d(x, 3, 1, "VALID") * 9.0  # 3x3 sums: cheaper than a depthwise conv
    inner = (box + 4.0 * x[:, 1:-1, 1:-1, :]) / 13.0
    pad = [[0, 0], [1, 1], [1, 1], [0, 0]]
    mask = tf.pad(tf.ones_like(inner, tf.bool), pad)
    return to_uint8(tf.where(mask, tf.pad(inner, pad), x))


@batched
def sharpness(images, level):
    return blend(smooth(images), images, _factor(level))


# Name -> op(images, level). Order matters: the policies index into it.
OPS = {
    "Identity": identity,
    "ShearX": shear_x,
    "ShearY": shear_y,
    "TranslateX": translate_x,
    "TranslateY": translate_y,
    "Rotate": rotate,
    "AutoContrast": autocontrast,
    "Invert": invert,
    "Equalize": equalize,
    "Solarize": solarize,
    "Posterize": posterize,
    "Contrast": contrast,
    "Color": color,
    "Brightness": brightness,
    "Sharpness": sharpness,
}
OP_NAMES = list(OPS)


def apply_op(image, index, level, names=OP_NAMES):
    """One image: run only `names[index]` (index, level: scalar tensors) via tf.switch_case."""
    image = tf.convert_to_tensor(image)
    level = tf.cast(level, tf.float32)
    branches = [lambda op=OPS[n]: op(image, level) for n in names]
    return tf.ensure_shape(tf.switch_case(tf.cast(index, tf.int32), branches), image.shape)


def apply_ops(images, index, level, names=OP_NAMES):
    """A batch: image b gets `names[index[b]]` at level[b]; index == len(names) leaves it as is.
    Each op runs once, on just the images that drew it (dynamic_partition / dynamic_stitch)."""
    images = tf.convert_to_tensor(images)
    n = len(names)
    index = tf.cast(index, tf.int32)
    level = per_image(level, images)
    parts = tf.dynamic_partition(images, index, n + 1)
    levels = tf.dynamic_partition(level, index, n + 1)
    where = tf.dynamic_partition(tf.range(tf.shape(images)[0]), index, n + 1)
    outs = [parts[k] if names[k] == "Identity" else OPS[names[k]](parts[k], levels[k]) for k in range(n)]
    return tf.ensure_shape(tf.dynamic_stitch(where, outs + [parts[n]]), images.shape)
