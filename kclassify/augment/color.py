"""Color jitter, random rotation and random grayscale, per uint8 image (C = 1 or 3)."""
import tensorflow as tf

from kclassify.augment import ops


def _factor(strength):
    """torchvision's ColorJitter: a factor uniform in [max(0, 1 - s), 1 + s]."""
    return tf.random.uniform([], max(0.0, 1.0 - strength), 1.0 + strength)


def adjust_hue(image, delta):
    if ops.channels(image) == 1:
        return image
    return ops.to_uint8(tf.image.adjust_hue(ops.to_float(image) / 255.0, delta) * 255.0)


def color_jitter(image, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.0):
    """Brightness, contrast, saturation, hue (in this fixed order; torchvision shuffles it).
    Saturation and hue leave gray images alone."""
    if brightness:
        image = ops.adjust_brightness(image, _factor(brightness))
    if contrast:
        image = ops.adjust_contrast(image, _factor(contrast))
    if saturation:
        image = ops.adjust_saturation(image, _factor(saturation))
    if hue:
        image = adjust_hue(image, tf.random.uniform([], -hue, hue))
    return image


def random_rotate(image, degrees=15.0, fill_mode="reflect", fill=0, interpolation="bilinear"):
    """Rotate by an angle uniform in [-degrees, degrees] about the center."""
    angle = tf.random.uniform([], -degrees, degrees)
    return ops.rotate_degrees(image, angle, fill, interpolation.upper(), fill_mode.upper())


def random_grayscale(image, prob=0.2):
    """With probability `prob`, replace the image by its luma in every channel."""
    if ops.channels(image) == 1:
        return image
    return tf.cond(tf.random.uniform([]) < prob, lambda: ops.gray(image), lambda: image)
