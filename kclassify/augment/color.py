"""Color jitter, random rotation and random grayscale on uint8 images (C = 1 or 3).

Each takes one HxWxC image or a BxHxWxC batch; in a batch every image draws its own factors."""
import tensorflow as tf

from kclassify.augment import ops
from kclassify.augment.ops import batched


def _factors(images, strength):
    """torchvision's ColorJitter: factors uniform in [max(0, 1 - s), 1 + s], one per image."""
    return tf.random.uniform(tf.shape(images)[:1], max(0.0, 1.0 - strength), 1.0 + strength)


@batched
def adjust_hue(images, delta):
    """Rotate hue by delta[b] (fraction of a turn) per image; gray images stay as they are."""
    if ops.channels(images) == 1:
        return images
    hsv = tf.image.rgb_to_hsv(ops.to_float(images) / 255.0)
    hue = tf.math.floormod(hsv[..., :1] + ops.pixelwise(ops.per_image(delta, images)), 1.0)
    return ops.to_uint8(tf.image.hsv_to_rgb(tf.concat([hue, hsv[..., 1:]], -1)) * 255.0)


@batched
def color_jitter(images, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.0):
    """Brightness, contrast, saturation, hue (in this fixed order; torchvision shuffles it).
    Saturation and hue leave gray images alone."""
    if brightness:
        images = ops.adjust_brightness(images, _factors(images, brightness))
    if contrast:
        images = ops.adjust_contrast(images, _factors(images, contrast))
    if saturation:
        images = ops.adjust_saturation(images, _factors(images, saturation))
    if hue:
        images = adjust_hue(images, tf.random.uniform(tf.shape(images)[:1], -hue, hue))
    return images


@batched
def random_rotate(images, degrees=15.0, fill_mode="reflect", fill=0, interpolation="bilinear"):
    """Rotate each image by an angle uniform in [-degrees, degrees] about its center."""
    angle = tf.random.uniform(tf.shape(images)[:1], -degrees, degrees)
    return ops.rotate_degrees(images, angle, fill, interpolation.upper(), fill_mode.upper())


@batched
def random_grayscale(images, prob=0.2):
    """Replace each image, with probability `prob`, by its luma in every channel."""
    if ops.channels(images) == 1:
        return images
    pick = tf.random.uniform(tf.shape(images)[:1]) < prob
    return tf.where(pick[:, None, None, None], ops.gray(images), images)
