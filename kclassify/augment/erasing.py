"""Cutout (DeVries & Taylor 2017) and random erasing (Zhong et al. 2020), per uint8 image."""
import tensorflow as tf

# DeVries & Taylor zero the *normalized* image, i.e. paint the dataset mean. Normalization lives
# in the model here, so holes take a uint8 fill instead; mid-gray is close to the CIFAR mean
# (125, 123, 114). Pass the dataset's mean per channel to match the paper exactly.
CUTOUT_FILL = 128


def _fill_value(fill, image):
    return tf.broadcast_to(tf.cast(fill, image.dtype), tf.shape(image))


def box_mask(height, width, top, left, box_h, box_w):
    """[..., H, W, 1] bool: True inside [top, top+box_h) x [left, left+box_w); args broadcast."""
    ys = tf.range(height)[:, None]
    xs = tf.range(width)[None, :]
    inside = ((ys >= top[..., None, None]) & (ys < (top + box_h)[..., None, None])
              & (xs >= left[..., None, None]) & (xs < (left + box_w)[..., None, None]))
    return inside[..., None]


def cutout(image, n_holes=1, length=16, fill=CUTOUT_FILL):
    """`n_holes` squares of side `length` whose centers lie anywhere in the image; the parts
    outside the image are clipped away (so holes at the border are smaller), as in the paper."""
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    cy = tf.random.uniform([n_holes], 0, h, tf.int32)
    cx = tf.random.uniform([n_holes], 0, w, tf.int32)
    holes = box_mask(h, w, cy - length // 2, cx - length // 2, tf.fill([n_holes], length), tf.fill([n_holes], length))
    return tf.where(tf.reduce_any(holes, axis=0), _fill_value(fill, image), image)


def random_erasing(image, prob=0.5, area=(0.02, 0.4), aspect=0.3, value="random", attempts=10):
    """With probability `prob`, replace one rectangle of area fraction in `area` and aspect
    ratio uniform in [aspect, 1/aspect] by random pixels (value="random") or a fill value.

    The paper resamples until the rectangle fits; here `attempts` candidates are drawn at once
    and the first that fits is used (none fitting, 10 draws with the defaults: nothing erased)."""
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    hf, wf = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
    target = tf.random.uniform([attempts], area[0], area[1]) * hf * wf
    ratio = tf.random.uniform([attempts], aspect, 1.0 / aspect)
    eh = tf.cast(tf.round(tf.sqrt(target * ratio)), tf.int32)
    ew = tf.cast(tf.round(tf.sqrt(target / ratio)), tf.int32)
    fits = (eh < h) & (ew < w) & (eh > 0) & (ew > 0)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
    eh, ew = eh[first], ew[first]
    top = tf.random.uniform([], 0, h - eh + 1, tf.int32)
    left = tf.random.uniform([], 0, w - ew + 1, tf.int32)
    erase = (tf.random.uniform([]) < prob) & tf.reduce_any(fits)
    mask = box_mask(h, w, top, left, eh, ew) & erase
    if isinstance(value, str) and value == "random":
        fill = tf.random.uniform(tf.shape(image), 0, 256, tf.int32)
        fill = tf.cast(fill, image.dtype)
    else:
        fill = _fill_value(value, image)
    return tf.where(mask, fill, image)
