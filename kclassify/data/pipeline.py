"""tf.data pipelines: uint8 images -> batches -> augmentation -> float pixels and one-hot labels.

Training is one endless stream of batches whose content is a function of the global step alone:
batch s of an in-memory split holds the images at positions s*B .. s*B+B-1 of epoch s // steps_per_epoch's
permutation (`index_shuffle`, stateless, from the seed and the epoch). So a run resumed at any step
sees the data order it would have had, a time budget may end it mid-epoch, and each worker of a
multi-worker run takes its own slice of the same global batch. Streamed splits (packed shards)
provide `examples(seed, epoch, skip, shard_index, shard_count, training)` and are batched here.

Augmentation runs on uint8 batches with per-image draws (translation, flip, the registered ops),
then labels become one-hot (label smoothing and MixUp/CutMix need it), smoothed, and mixed: the
stages of `batch_stages`, mapped here by tf.data threads, or run inside the compiled train step
(runtime.augment_on device, a GPU's default) on the raw stream's uint8 batches.
"""
import numpy as np
import tensorflow as tf

from kclassify.augment.basic import batch_augmenter, flip_batch
from kclassify.augment.mixing import batch_mixer
from kclassify.data.batching import is_streamed, steps_per_epoch

AUTOTUNE = tf.data.AUTOTUNE
ENDLESS = 2 ** 62


def smoother(eps, mode):
    """Label smoothing on one-hot targets; both variants keep each row summing to 1."""
    if not eps:
        return None
    if mode == "uniform":
        return lambda y: y * (1.0 - eps) + eps / tf.cast(tf.shape(y)[-1], y.dtype)
    return lambda y: y * (1.0 - eps) + (1.0 - y) * eps / tf.cast(tf.shape(y)[-1] - 1, y.dtype)


def effective_number_weights(labels, num_classes, beta):
    """Class weights (1 - beta) / (1 - beta^n_c), scaled to sum to the number of classes present."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    w = np.where(counts > 0, (1.0 - beta) / (1.0 - np.power(beta, np.maximum(counts, 1))), 0.0)
    return (w * (counts > 0).sum() / w.sum()).astype(np.float32)


def _resident(array):
    """The array as a CPU resource variable: tf.data functions read it by reference, so it is not
    serialized into the dataset graph (graph constants stop at 2 GB)."""
    with tf.device("/cpu:0"):
        return tf.Variable(array, trainable=False)


class BatchPlan:
    """Which images make up global batch `step`: positions of a stateless per-epoch permutation
    (or, with class-balanced sampling, equal-probability classes drawn with replacement)."""

    def __init__(self, labels, batch_size, steps_per_epoch, seed, balance="none", worker=(0, 1)):
        self.n, self.batch, self.spe, self.seed = len(labels), int(batch_size), int(steps_per_epoch), int(seed)
        self.worker, self.workers = worker
        if self.batch % self.workers:
            raise ValueError(f"batch {batch_size} does not split over {self.workers} workers")
        self.local = self.batch // self.workers
        self.lo, self.hi = self.worker * self.local, (self.worker + 1) * self.local
        self.balance = balance
        if balance == "sampling":
            order = np.argsort(labels, kind="stable")
            counts = np.bincount(labels)
            present = np.flatnonzero(counts)
            self.members = tf.constant(order.astype(np.int64))
            self.starts = tf.constant(np.concatenate([[0], np.cumsum(counts)[:-1]])[present].astype(np.int64))
            self.sizes = tf.constant(counts[present].astype(np.int64))

    def epoch(self, step):
        return step // self.spe

    def indices(self, step):
        """int64 indices of this worker's images in global batch `step` (a scalar int64 tensor)."""
        epoch, within = step // self.spe, step % self.spe
        pos = within * self.batch + tf.range(self.lo, self.hi, dtype=tf.int64)
        if self.balance == "sampling":
            seed = tf.stack([tf.constant(self.seed, tf.int64), step])
            r = tf.random.stateless_uniform([2, self.batch], seed, maxval=2 ** 31 - 1, dtype=tf.int64)[:, self.lo:self.hi]
            cls = r[0] % tf.size(self.sizes, out_type=tf.int64)
            within_cls = r[1] % tf.gather(self.sizes, cls)
            return tf.gather(self.members, tf.gather(self.starts, cls) + within_cls)
        seed = tf.stack([tf.constant(self.seed, tf.int64), epoch])
        return tf.random.experimental.index_shuffle(pos, seed, tf.constant(self.n - 1, tf.int64))

    def flips(self, step, idx):
        """Alternating flip: image i is mirrored in epoch e iff coin(i) xor (e odd), so each image
        is mirrored in exactly one of every two consecutive epochs, at random in the first."""
        seed = tf.constant([self.seed, -1], tf.int64)
        coin = tf.random.experimental.index_shuffle(idx, seed, tf.constant(self.n - 1, tf.int64)) % 2
        return tf.not_equal(coin, (step // self.spe) % 2)


def memory_batches(split, plan, start_step=0):
    """(uint8 images, int32 labels, flip mask) per step from an in-memory split."""
    images, labels = _resident(split.images), tf.constant(split.labels.astype(np.int32))

    def batch(step):
        idx = plan.indices(step)
        return tf.gather(images, idx), tf.gather(labels, idx), plan.flips(step, idx)

    return tf.data.Dataset.range(start_step, ENDLESS).map(batch, num_parallel_calls=AUTOTUNE)


def streamed_batches(split, plan, start_step=0):
    """Batches from a streamed split's per-epoch example streams, skipping into the first epoch.
    Alternating flip needs stable image indices, which a stream does not have: flips are random."""
    first, skip = divmod(int(start_step), plan.spe)
    local = plan.local

    def epoch(e, skip_images=0):
        examples = split.examples(seed=plan.seed, epoch=e, skip=skip_images, shard_index=plan.worker,
                                  shard_count=plan.workers, training=True)
        return examples.batch(local, drop_remainder=True).take(plan.spe - skip_images // local)

    rest = tf.data.Dataset.range(first + 1, ENDLESS).flat_map(lambda e: epoch(e))
    ds = epoch(first, skip * local).concatenate(rest)
    return ds.map(lambda x, y: (x, y, tf.random.uniform([tf.shape(y)[0]]) < 0.5), num_parallel_calls=AUTOTUNE)


def training_stream(split, num_classes, plan, augment=None, start_step=0, smooth=None, mixer=None,
                    class_weights=None, flip=False):
    """The endless batch stream of a training run from global step `start_step`."""
    first, *rest = batch_stages(num_classes, augment, smooth, mixer, class_weights, flip)
    return _mapped(raw_stream(split, plan, start_step).map(first, num_parallel_calls=AUTOTUNE, deterministic=True),
                   rest)


def raw_stream(split, plan, start_step=0):
    """(uint8 images, int32 labels, alternating-flip mask) batches, before any augmentation."""
    source = streamed_batches if is_streamed(split) else memory_batches
    return source(split, plan, start_step)


def batch_stages(num_classes, augment=None, smooth=None, mixer=None, class_weights=None, flip=False):
    """The functions that turn a raw batch into what train_step takes, in order: flip and
    augmentation on uint8, then float pixels and one-hot labels (smoothed), MixUp/CutMix last (they
    mix the smoothed targets), then per-sample class weights. The host stream maps them; with
    runtime.augment_on device the compiled step runs them (`batch_preparer`)."""
    def augment_batch(x, y, mask):
        if flip == "alternate":
            x = flip_batch(x, mask)
        elif flip:
            x = flip_batch(x, tf.random.uniform([tf.shape(x)[0]]) < 0.5)
        return (augment(x) if augment is not None else x), y

    def targets(x, y):
        y = tf.one_hot(y, num_classes)
        return tf.cast(x, tf.float32), smooth(y) if smooth is not None else y

    stages = [augment_batch, targets] + ([mixer] if mixer is not None else [])
    if class_weights is not None:
        w = tf.constant(class_weights)
        stages.append(lambda x, y: (x, y, tf.reduce_sum(y * w, axis=-1)))
    return stages


def batch_preparer(*args, **kwargs):
    """batch_stages as one function of a raw batch (a tuple), for inside a train step."""
    stages = batch_stages(*args, **kwargs)

    def prepare(batch):
        for stage in stages:
            batch = stage(*batch)
        return batch

    return prepare


def _mapped(ds, stages):
    """The stages after augmentation (batch_stages), one map each (as measured in
    benchmarks/train_speed.py), on (images, labels) batches."""
    for stage in stages:
        ds = ds.map(stage, num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


def recipe_train_dataset(recipe, split, num_classes, mix=True, start_step=0, worker=(0, 1), raw=False):
    """The training stream a recipe describes (mix=False: without MixUp/CutMix). raw=True: the
    batches before `recipe_preparer`, for a step that prepares them on the device."""
    t = recipe.train
    batch = min(t.batch_size, len(split))
    plan = BatchPlan(split.labels, batch, steps_per_epoch(split, batch, t.steps_per_epoch, worker[1]),
                     recipe.runtime.seed, "sampling" if t.class_balance == "sampling" else "none", worker)
    if raw:
        return raw_stream(split, plan, start_step).prefetch(AUTOTUNE)
    augment, smooth, mixer, weights, flip = _recipe_stages(recipe, split, num_classes, mix)
    return training_stream(split, num_classes, plan, augment, start_step, smooth, mixer, weights, flip)


def recipe_preparer(recipe, split, num_classes, mix=True):
    """What the host stream does to a raw batch of the recipe, as one function for a train step."""
    return batch_preparer(num_classes, *_recipe_stages(recipe, split, num_classes, mix))


def _recipe_stages(recipe, split, num_classes, mix):
    """(augment, smooth, mixer, class weights, flip) of a recipe."""
    a, t = recipe.augment, recipe.train
    mixer = batch_mixer(a.mixup_alpha, a.cutmix_alpha, a.mix_switch_prob, a.mix_prob) if mix else None
    weights = (effective_number_weights(split.labels, num_classes, t.class_balance_beta)
               if t.class_balance == "loss" else None)
    return (batch_augmenter(a, flip=False), smoother(t.label_smoothing, t.label_smoothing_mode), mixer, weights,
            a.flip)


def train_dataset(split, num_classes, batch_size, augment=None, seed=0, balance="none", epochs=1):
    """`epochs` epochs of training batches (full batches only) with a batch augmenter: for tests
    and tools that want a finite dataset; training itself uses the endless stream."""
    batch = min(batch_size, len(split))
    plan = BatchPlan(split.labels, batch, steps_per_epoch(split, batch), seed, balance)
    return training_stream(split, num_classes, plan, augment).take(plan.spe * epochs)
