"""MixUp (Zhang et al. 2018) and CutMix (Yun et al. 2019) on a batch of float images and
one-hot labels, with timm's per-batch switch between them.

One lambda per batch, as in both papers. Each image is mixed with its mirror in the batch
(timm's `flip`): the batch is already shuffled, so the pairing is random, and it needs no
permutation gather on the labels.
"""
import tensorflow as tf


def sample_beta(alpha, shape=()):
    """Beta(alpha, alpha) from two Gamma draws: X / (X + Y), X, Y ~ Gamma(alpha)."""
    x = tf.random.gamma(shape, alpha)
    y = tf.random.gamma(shape, alpha)
    return x / (x + y)


def _partner(t):
    return tf.reverse(t, axis=[0])


def mixup(images, labels, alpha=0.2):
    """images' = lam x + (1 - lam) x_partner, labels likewise, lam ~ Beta(alpha, alpha)."""
    lam = sample_beta(alpha)
    mix = lambda t: lam * t + (1.0 - lam) * _partner(t)  # noqa: E731
    return mix(images), mix(tf.cast(labels, images.dtype))


def cutmix_box(height, width, lam):
    """Box (top, left, box_h, box_w) covering about 1 - lam of the image: side ratio
    sqrt(1 - lam), center uniform over the image, clipped at the borders (as in the paper)."""
    ratio = tf.sqrt(1.0 - lam)
    cut_h = tf.cast(tf.cast(height, tf.float32) * ratio, tf.int32)
    cut_w = tf.cast(tf.cast(width, tf.float32) * ratio, tf.int32)
    cy = tf.random.uniform([], 0, height, tf.int32)
    cx = tf.random.uniform([], 0, width, tf.int32)
    top, bottom = tf.clip_by_value(cy - cut_h // 2, 0, height), tf.clip_by_value(cy + cut_h // 2, 0, height)
    left, right = tf.clip_by_value(cx - cut_w // 2, 0, width), tf.clip_by_value(cx + cut_w // 2, 0, width)
    return top, left, bottom - top, right - left


def cutmix(images, labels, alpha=1.0, prob=1.0):
    """With probability `prob` (per batch), paste a box of each image's partner; the label
    weight is the exact pasted area ratio (recomputed after clipping: lam is what the pixels
    show, not what was drawn). Beta(1, 1), the default, is the paper's uniform lam."""
    if prob < 1.0:
        return tf.cond(tf.random.uniform([]) < prob, lambda: cutmix(images, labels, alpha),
                       lambda: (images, tf.cast(labels, images.dtype)))
    shape = tf.shape(images)
    h, w = shape[1], shape[2]
    top, left, bh, bw = cutmix_box(h, w, sample_beta(alpha))
    ys, xs = tf.range(h)[:, None], tf.range(w)[None, :]
    inside = (ys >= top) & (ys < top + bh) & (xs >= left) & (xs < left + bw)
    mixed = tf.where(inside[None, :, :, None], _partner(images), images)
    lam = 1.0 - tf.cast(bh * bw, images.dtype) / tf.cast(h * w, images.dtype)
    labels = tf.cast(labels, images.dtype)
    return mixed, lam * labels + (1.0 - lam) * _partner(labels)


def mix_batch(images, labels, mixup_alpha=0.0, cutmix_alpha=0.0, switch_prob=0.5, prob=1.0):
    """timm's Mixup in batch mode: with probability `prob` mix the batch, by CutMix with
    probability `switch_prob` when both alphas are set, else by whichever is set.
    Alphas of 0 turn a method off; with both off the batch passes through (labels as float)."""
    labels = tf.cast(labels, images.dtype)
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return images, labels
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cutmix = tf.random.uniform([]) < switch_prob
        mixed = lambda: tf.cond(use_cutmix, lambda: cutmix(images, labels, cutmix_alpha),  # noqa: E731
                                lambda: mixup(images, labels, mixup_alpha))
    elif cutmix_alpha > 0:
        mixed = lambda: cutmix(images, labels, cutmix_alpha)  # noqa: E731
    else:
        mixed = lambda: mixup(images, labels, mixup_alpha)  # noqa: E731
    if prob >= 1.0:
        return mixed()
    return tf.cond(tf.random.uniform([]) < prob, mixed, lambda: (images, labels))


def batch_mixer(mixup_alpha=0.0, cutmix_alpha=0.0, switch_prob=0.5, prob=1.0):
    """A function (images, labels) -> (images, labels) for `dataset.map` after batching, or
    None when both alphas are 0."""
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return None
    return lambda x, y: mix_batch(x, y, mixup_alpha, cutmix_alpha, switch_prob, prob)
