"""tf.data pipelines: in-memory uint8 arrays -> (per-image augmentation) -> batch -> float
pixels and one-hot labels (one-hot from the start: label smoothing and MixUp need it)."""
import numpy as np
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE


def _finish(ds, num_classes, batch_size, drop_remainder, batch_augment=None, smooth=None, mixer=None):
    """Batch, then (on uint8 batches) the registered ops, then float pixels and one-hot labels,
    label smoothing, and MixUp/CutMix last (they mix the smoothed targets)."""
    ds = ds.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=AUTOTUNE)
    if batch_augment is not None:  # each image still draws its own ops; batched is 2-4x faster
        ds = ds.map(lambda x, y: (batch_augment(x), y), num_parallel_calls=AUTOTUNE, deterministic=False)
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), tf.one_hot(y, num_classes)), num_parallel_calls=AUTOTUNE)
    if smooth is not None:
        ds = ds.map(lambda x, y: (x, smooth(y)), num_parallel_calls=AUTOTUNE)
    if mixer is not None:
        ds = ds.map(mixer, num_parallel_calls=AUTOTUNE, deterministic=False)
    return ds.prefetch(AUTOTUNE)


def smoother(eps, mode):
    """Label smoothing on one-hot targets; both variants keep each row summing to 1."""
    if not eps:
        return None
    if mode == "uniform":
        return lambda y: y * (1.0 - eps) + eps / tf.cast(tf.shape(y)[-1], y.dtype)
    return lambda y: y * (1.0 - eps) + (1.0 - y) * eps / tf.cast(tf.shape(y)[-1] - 1, y.dtype)


def balanced_stream(split, seed=0):
    """Every class drawn with equal probability (oversampling rare classes), len(split) images
    an epoch."""
    classes = np.unique(split.labels)
    streams = []
    for c in classes:
        idx = np.flatnonzero(split.labels == c)
        ds = tf.data.Dataset.from_tensor_slices((split.images[idx], split.labels[idx]))
        streams.append(ds.shuffle(len(idx), seed=seed + int(c), reshuffle_each_iteration=True).repeat())
    weights = [1.0 / len(classes)] * len(classes)
    return tf.data.Dataset.sample_from_datasets(streams, weights, seed=seed).take(len(split))


def effective_number_weights(labels, num_classes, beta):
    """Class weights (1 - beta) / (1 - beta^n_c), scaled to sum to the number of classes present."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    w = np.where(counts > 0, (1.0 - beta) / (1.0 - np.power(beta, np.maximum(counts, 1))), 0.0)
    return (w * (counts > 0).sum() / w.sum()).astype(np.float32)


def train_dataset(split, num_classes, batch_size, augment=None, seed=0, batch_augment=None, smooth=None,
                  mixer=None, balance="none", class_weights=None):
    """Shuffled each epoch, cropped/flipped per image, full batches only (stable BN statistics);
    class_weights adds per-sample weights (for soft labels, the label-weighted mean)."""
    if balance == "sampling":
        ds = balanced_stream(split, seed)
    else:
        ds = tf.data.Dataset.from_tensor_slices((split.images, split.labels))
        ds = ds.shuffle(len(split), seed=seed, reshuffle_each_iteration=True)
    if augment is not None:
        ds = ds.map(lambda x, y: (augment(x), y), num_parallel_calls=AUTOTUNE, deterministic=False)
    ds = _finish(ds, num_classes, min(batch_size, len(split)), True, batch_augment, smooth, mixer)
    if class_weights is not None:
        w = tf.constant(class_weights)
        ds = ds.map(lambda x, y: (x, y, tf.reduce_sum(y * w, axis=-1)), num_parallel_calls=AUTOTUNE)
    return ds


def recipe_train_dataset(recipe, split, num_classes, mix=True):
    """The training pipeline a recipe describes (mix=False: without MixUp/CutMix)."""
    from kclassify.augment import image_augmenter
    from kclassify.augment.mixing import batch_mixer
    from kclassify.augment.registry import chain

    a, t = recipe.augment, recipe.train
    ops = chain([(op["name"], {k: v for k, v in op.items() if k != "name"}) for op in a.ops])
    mixer = batch_mixer(a.mixup_alpha, a.cutmix_alpha, a.mix_switch_prob, a.mix_prob) if mix else None
    weights = (effective_number_weights(split.labels, num_classes, t.class_balance_beta)
               if t.class_balance == "loss" else None)
    return train_dataset(split, num_classes, t.batch_size, image_augmenter(a), recipe.runtime.seed, ops,
                         smoother(t.label_smoothing, t.label_smoothing_mode), mixer, t.class_balance, weights)


def eval_dataset(split, num_classes, batch_size):
    """Unshuffled, unaugmented, every image (the last batch may be short)."""
    ds = tf.data.Dataset.from_tensor_slices((split.images, split.labels))
    return _finish(ds, num_classes, batch_size, drop_remainder=False)
