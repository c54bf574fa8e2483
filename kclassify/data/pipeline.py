"""tf.data pipelines: in-memory uint8 arrays -> (per-image augmentation) -> batch -> float
pixels and one-hot labels (one-hot from the start: label smoothing and MixUp need it)."""
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE


def _finish(ds, num_classes, batch_size, drop_remainder):
    ds = ds.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=AUTOTUNE)
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), tf.one_hot(y, num_classes)), num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


def train_dataset(split, num_classes, batch_size, augment=None, seed=0):
    """Shuffled each epoch, augmented per image, full batches only (stable BN statistics)."""
    ds = tf.data.Dataset.from_tensor_slices((split.images, split.labels))
    ds = ds.shuffle(len(split), seed=seed, reshuffle_each_iteration=True)
    if augment is not None:
        ds = ds.map(lambda x, y: (augment(x), y), num_parallel_calls=AUTOTUNE, deterministic=False)
    return _finish(ds, num_classes, min(batch_size, len(split)), drop_remainder=True)


def eval_dataset(split, num_classes, batch_size):
    """Unshuffled, unaugmented, every image (the last batch may be short)."""
    ds = tf.data.Dataset.from_tensor_slices((split.images, split.labels))
    return _finish(ds, num_classes, batch_size, drop_remainder=False)
