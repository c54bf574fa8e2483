"""Cutout (DeVries & Taylor 2017) and random erasing (Zhong et al. 2020) on uint8 images.

Both take one HxWxC image or a BxHxWxC batch; in a batch every image draws its own boxes."""
import tensorflow as tf

from kclassify.augment.ops import batched

# DeVries & Taylor zero the *normalized* image, i.e. paint the dataset mean. Normalization lives
# in the model here, so holes take a uint8 fill instead; mid-gray is close to the CIFAR mean
# (125, 123, 114). Pass the dataset's mean per channel to match the paper exactly.
CUTOUT_FILL = 128


def box_mask(height, width, top, left, box_h, box_w):
    """[..., H, W, 1] bool, True inside [top, top+box_h) x [left, left+box_w); the box
    arguments are int tensors of one shape [...] (one box each)."""
    rows = tf.range(height) >= top[..., None]
    rows &= tf.range(height) < (top + box_h)[..., None]
    cols = tf.range(width) >= left[..., None]
    cols &= tf.range(width) < (left + box_w)[..., None]
    return (rows[..., :, None] & cols[..., None, :])[..., None]


def _uniform_int(shape, high):
    """Integers uniform in [0, high) with `high` a tensor of `shape` (per-image bounds)."""
    return tf.cast(tf.random.uniform(shape) * tf.cast(high, tf.float32), tf.int32)


@batched
def cutout(images, n_holes=1, length=16, fill=CUTOUT_FILL):
    """`n_holes` squares of side `length` per image whose centers lie anywhere in the image;
    the parts outside are clipped away (holes at the border are smaller), as in the paper."""
    b, h, w = tf.shape(images)[0], tf.shape(images)[1], tf.shape(images)[2]
    cy = tf.random.uniform([b, n_holes], 0, h, tf.int32)
    cx = tf.random.uniform([b, n_holes], 0, w, tf.int32)
    side = tf.fill([b, n_holes], length)
    holes = tf.reduce_any(box_mask(h, w, cy - length // 2, cx - length // 2, side, side), axis=1)
    return tf.where(holes, tf.cast(fill, images.dtype), images)


@batched
def random_erasing(images, prob=0.5, area=(0.02, 0.4), aspect=0.3, value="random", attempts=10):
    """With probability `prob`, replace one rectangle of area fraction in `area` and aspect
    ratio uniform in [aspect, 1/aspect] by random pixels (value="random") or a fill value.

    The paper resamples until the rectangle fits; here `attempts` candidates are drawn at once
    and the first that fits is used (none fitting in 10 draws with the defaults: no erasing)."""
    b, h, w = tf.shape(images)[0], tf.shape(images)[1], tf.shape(images)[2]
    target = tf.random.uniform([b, attempts], area[0], area[1]) * tf.cast(h * w, tf.float32)
    ratio = tf.random.uniform([b, attempts], aspect, 1.0 / aspect)
    eh = tf.cast(tf.round(tf.sqrt(target * ratio)), tf.int32)
    ew = tf.cast(tf.round(tf.sqrt(target / ratio)), tf.int32)
    fits = (eh < h) & (ew < w) & (eh > 0) & (ew > 0)
    first = tf.argmax(tf.cast(fits, tf.int32), axis=1, output_type=tf.int32)
    eh, ew = tf.gather(eh, first, batch_dims=1), tf.gather(ew, first, batch_dims=1)
    top, left = _uniform_int([b], h - eh + 1), _uniform_int([b], w - ew + 1)
    erase = (tf.random.uniform([b]) < prob) & tf.reduce_any(fits, axis=1)
    mask = box_mask(h, w, top, left, eh, ew) & erase[:, None, None, None]
    if isinstance(value, str) and value == "random":
        fill = tf.cast(tf.random.uniform(tf.shape(images), 0, 256, tf.int32), images.dtype)
    else:
        fill = tf.cast(value, images.dtype)
    return tf.where(mask, fill, images)
