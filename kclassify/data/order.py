"""The order of a training stream: stateless, a function of (seed, epoch), so a resumed run reads
what it would have read. Shared by the in-memory splits and the streamed packs. TensorFlow is
imported inside the functions: importing kclassify.data stays free of it."""


def epoch_seed(seed, epoch):
    """One int64 seed per (seed, epoch); `epoch` may be a tensor (inside Dataset.flat_map)."""
    import tensorflow as tf

    return tf.cast(seed, tf.int64) * 1_000_003 + tf.cast(epoch, tf.int64)


def block_shuffle(ds, window, seed):
    """Shuffle `ds` within consecutive windows of `window` elements, each by a stateless
    permutation of (seed, window index). Not Dataset.shuffle: with a tensor seed (an epoch inside
    flat_map) it fails whenever the global seed is 0 (TF compares the seed pair to (0, 0) in Python)."""
    import tensorflow as tf

    def permute(i, block):
        n = tf.shape(tf.nest.flatten(block)[0])[0]
        order = tf.argsort(tf.random.stateless_uniform([n], tf.stack([seed, tf.cast(i, tf.int64) + 2])))
        return tf.nest.map_structure(lambda t: tf.gather(t, order), block)

    return ds.batch(window).enumerate().map(permute, num_parallel_calls=tf.data.AUTOTUNE,
                                            deterministic=True).unbatch()
