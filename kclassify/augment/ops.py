"""The plain image ops of AutoAugment and RandAugment, on one uint8 HxWxC image (C = 1 or 3).

Written with tf ops only (no PIL, no py_function), so they run eagerly and inside
`dataset.map`. Each op in `OPS` has the signature `op(image, level)` with `level` a float in
0..10 (the AutoAugment convention); `apply_op` runs only the op it picks (tf.switch_case),
which is what makes per-image policies cheap.

Level -> magnitude follows the reference implementation of the AutoAugment authors
(tensorflow/models research/autoaugment, PARAMETER_MAX = 10): shear 0.3 * level/10,
translate 10 px of a 32 px image (scaled to the image size), rotate 30 degrees, solarize
threshold 256 - 256 * level/10, enhancement factor 0.1 + 1.8 * level/10 (Color, Contrast,
Brightness, Sharpness). Shear, translate and rotate take a random sign. Posterize keeps
8 - 4 * level/10 bits: the paper's stated range [4, 8] (the reference code's 4 - level bits
blacks the image out at high levels).
"""
import math

import tensorflow as tf

MAX_LEVEL = 10.0
TRANSLATE_MAX = 10 / 32  # of the image side: 10 px on CIFAR's 32 px, as in the reference code
FILL = 128  # gray fill for pixels that affine ops move in (PIL-based ports use 128)


def to_float(image):
    return tf.cast(image, tf.float32)


def to_uint8(x):
    return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)


def channels(image):
    """Static channel count: ops branch on it in Python (gray images skip color ops)."""
    c = image.shape[-1]
    if c not in (1, 3):
        raise ValueError(f"images need 1 or 3 channels with a static shape, got shape {image.shape}")
    return c


def random_sign(x):
    return tf.where(tf.random.uniform([]) < 0.5, -x, x)


def blend(degenerate, image, factor):
    """PIL's ImageEnhance: degenerate + factor * (image - degenerate); factor > 1 extrapolates."""
    d = to_float(degenerate)
    return to_uint8(d + factor * (to_float(image) - d))


def gray(image):
    """Luma (ITU-R 601, as PIL's convert("L")) with the input's channel count; a no-op on gray."""
    if channels(image) == 1:
        return image
    luma = tf.image.rgb_to_grayscale(to_float(image))
    return to_uint8(tf.tile(luma, [1, 1, 3]))


# ---- affine ops: one ImageProjectiveTransformV3 call each ----

def transform(image, matrix, fill=FILL, interpolation="NEAREST", fill_mode="CONSTANT"):
    """Warp by the 8-number projective `matrix` that maps output (x, y) to input coordinates."""
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=tf.reshape(tf.cast(matrix, tf.float32), [1, 8]),
        output_shape=tf.shape(image)[:2], fill_value=tf.cast(fill, tf.float32),
        interpolation=interpolation, fill_mode=fill_mode)[0]
    return tf.ensure_shape(out, image.shape)


def rotate_degrees(image, degrees, fill=FILL, interpolation="NEAREST", fill_mode="CONSTANT"):
    """Rotate about the image center."""
    h, w = [tf.cast(s, tf.float32) - 1.0 for s in tf.unstack(tf.shape(image)[:2])]
    a = tf.cast(degrees, tf.float32) * (math.pi / 180.0)
    cos, sin = tf.cos(a), tf.sin(a)
    dx = (w - (cos * w - sin * h)) / 2.0
    dy = (h - (sin * w + cos * h)) / 2.0
    return transform(image, [cos, -sin, dx, sin, cos, dy, 0.0, 0.0], fill, interpolation, fill_mode)


def _side(image, axis):
    return tf.cast(tf.shape(image)[axis], tf.float32)


def shear_x(image, level, fill=FILL):
    s = random_sign(0.3 * level / MAX_LEVEL)
    return transform(image, [1.0, s, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0], fill)


def shear_y(image, level, fill=FILL):
    s = random_sign(0.3 * level / MAX_LEVEL)
    return transform(image, [1.0, 0.0, 0.0, s, 1.0, 0.0, 0.0, 0.0], fill)


def translate_x(image, level, fill=FILL):
    t = random_sign(tf.round(TRANSLATE_MAX * _side(image, 1) * level / MAX_LEVEL))
    return transform(image, [1.0, 0.0, t, 0.0, 1.0, 0.0, 0.0, 0.0], fill)


def translate_y(image, level, fill=FILL):
    t = random_sign(tf.round(TRANSLATE_MAX * _side(image, 0) * level / MAX_LEVEL))
    return transform(image, [1.0, 0.0, 0.0, 0.0, 1.0, t, 0.0, 0.0], fill)


def rotate(image, level, fill=FILL):
    return rotate_degrees(image, random_sign(30.0 * level / MAX_LEVEL), fill)


# ---- pixel ops ----

def identity(image, level=None):
    return image


def invert(image, level=None):
    return 255 - tf.convert_to_tensor(image)


def solarize_threshold(image, threshold):
    """Invert every pixel at or above `threshold` (0..256; 256 leaves the image as is)."""
    x = tf.cast(image, tf.int32)
    return tf.cast(tf.where(x < tf.cast(threshold, tf.int32), x, 255 - x), tf.uint8)


def solarize(image, level):
    return solarize_threshold(image, 256 - tf.cast(256.0 * level / MAX_LEVEL, tf.int32))


def posterize_bits(image, bits):
    """Keep the `bits` high bits of every value."""
    shift = tf.cast(8 - bits, tf.uint8)
    return tf.bitwise.left_shift(tf.bitwise.right_shift(image, shift), shift)


def posterize(image, level):
    return posterize_bits(image, 8 - tf.cast(4.0 * level / MAX_LEVEL, tf.int32))


def autocontrast(image, level=None):
    """Stretch each channel to 0..255; a flat channel stays as it is (as PIL)."""
    x = to_float(image)
    lo = tf.reduce_min(x, axis=[0, 1], keepdims=True)
    hi = tf.reduce_max(x, axis=[0, 1], keepdims=True)
    scale = 255.0 / tf.maximum(hi - lo, 1.0)
    stretched = tf.floor((x - lo) * scale)
    return to_uint8(tf.where(hi > lo, stretched, x))


def equalize(image, level=None):
    """PIL's ImageOps.equalize per channel, from one bincount over all channels."""
    c = channels(image)
    x = tf.reshape(tf.cast(image, tf.int32), [-1, c])
    offsets = tf.range(c) * 256  # channel k counts into bins 256k..256k+255
    hist = tf.reshape(tf.math.bincount(x + offsets, minlength=256 * c, maxlength=256 * c), [c, 256])
    last = 255 - tf.argmax(tf.reverse(tf.cast(hist > 0, tf.int32), [1]), axis=1, output_type=tf.int32)
    last_count = tf.gather(hist, last, batch_dims=1)
    step = (tf.shape(x)[0] - last_count) // 255  # PIL ignores the highest occupied bin
    safe = tf.maximum(step, 1)[:, None]
    lut = (tf.cumsum(hist, axis=1) + safe // 2) // safe
    lut = tf.clip_by_value(tf.concat([tf.zeros([c, 1], tf.int32), lut[:, :-1]], axis=1), 0, 255)
    mapped = tf.gather(tf.reshape(lut, [-1]), x + offsets)
    out = tf.where((step > 0)[None, :], mapped, x)  # a single-valued channel stays as it is
    return tf.reshape(tf.cast(out, tf.uint8), tf.shape(image))


def _factor(level):
    return 0.1 + 1.8 * level / MAX_LEVEL


def adjust_contrast(image, factor):
    """Blend with the mean gray level (PIL's Contrast takes the mean of the L histogram)."""
    mean = tf.round(tf.reduce_mean(to_float(gray(image)[..., :1])))
    return blend(tf.fill(tf.shape(image), mean), image, factor)


def adjust_brightness(image, factor):
    return blend(tf.zeros_like(image), image, factor)


def adjust_saturation(image, factor):
    return blend(gray(image), image, factor)  # gray image: gray(image) is image, a no-op


def color(image, level):
    return adjust_saturation(image, _factor(level))


def contrast(image, level):
    return adjust_contrast(image, _factor(level))


def brightness(image, level):
    return adjust_brightness(image, _factor(level))


def smooth(image):
    """PIL's SMOOTH filter (3x3, center weight 5, /13), border pixels unchanged."""
    c = channels(image)
    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, c, 1])
    blurred = tf.nn.depthwise_conv2d(to_float(image)[None], kernel, [1, 1, 1, 1], "VALID")[0]
    inner = tf.pad(tf.ones_like(blurred, tf.bool), [[1, 1], [1, 1], [0, 0]])
    blurred = tf.pad(blurred, [[1, 1], [1, 1], [0, 0]])
    return to_uint8(tf.where(inner, blurred, to_float(image)))


def sharpness(image, level):
    return blend(smooth(image), image, _factor(level))


# Name -> op(image, level). Order matters: apply_op and the policies index into it.
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
    """Run only `names[index]` on the image (index, level: scalar tensors, random per image)."""
    level = tf.cast(level, tf.float32)
    branches = [lambda op=OPS[n]: op(image, level) for n in names]
    return tf.ensure_shape(tf.switch_case(tf.cast(index, tf.int32), branches), image.shape)
