"""The compiled pieces of kclassify's training loop on TensorFlow, for every tf.distribute strategy:
the train step (with what runs around it), the training stream's distribution over replicas and
workers, and the weight averages' update (train/jax_loop.py holds JAX's; train/backends.py picks).

Keras 3.15's `model.fit` fails under MultiWorkerMirroredStrategy on TF 2.21 in two places: its
symbolic build reduces a PerReplica *data batch* eagerly (`_maybe_symbolic_build`, "Attempt to
convert a value (PerReplica...)") and its train function reduces scalar metrics with
`strategy.reduce("MEAN", v, axis=0)` ("Invalid reduction dimension 0 for input with 0
dimensions"). Both are in the driver, not in the step: Keras' own `model.train_step` works under
`strategy.run` on every strategy. So kclassify drives Keras' train_step itself (same model,
optimizer, losses and metrics) with a reduction that suits scalars, one code path for one
device, mirrored GPUs/CPUs and several workers.
"""
import tensorflow as tf


def is_multi_worker(strategy):
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def worker_of(strategy):
    """(this worker's index, number of workers): (0, 1) unless the strategy spans workers."""
    if is_multi_worker(strategy):
        resolver = strategy.cluster_resolver
        return int(resolver.task_id), int(strategy.extended._num_workers)
    return 0, 1


def make_train_function(trainer, strategy, jit_compile=False, wrap=None):
    """One compiled training step on the next batch of `iterator`; returns the reduced logs.
    `wrap(train_step)` gives the step that runs instead (the data filter's)."""
    step = wrap(trainer.train_step) if wrap else trainer.train_step
    if jit_compile:
        step = tf.function(step, jit_compile=True, reduce_retracing=True)

    @tf.function(reduce_retracing=True)
    def train_function(iterator):
        outputs = strategy.run(step, args=(next(iterator),))
        return {k: _reduce(strategy, v) for k, v in outputs.items()}

    return train_function


def _reduce(strategy, value):
    if strategy.num_replicas_in_sync == 1 and not is_multi_worker(strategy):
        return value
    return strategy.reduce("MEAN", value, axis=None)


def distribute(strategy, make_dataset):
    """An iterator over the training stream. `make_dataset(worker, workers)` builds the batches a
    worker feeds (its slice of each global batch); several local replicas split them further."""
    if is_multi_worker(strategy):
        def per_worker(ctx):
            ds = make_dataset(ctx.input_pipeline_id, ctx.num_input_pipelines)
            local_replicas = strategy.num_replicas_in_sync // ctx.num_input_pipelines
            return ds.rebatch(_batch_of(ds) // local_replicas) if local_replicas > 1 else ds

        options = tf.distribute.InputOptions(experimental_fetch_to_device=True)
        return iter(strategy.distribute_datasets_from_function(per_worker, options))
    ds = make_dataset(0, 1)
    if strategy.num_replicas_in_sync > 1:
        return iter(strategy.experimental_distribute_dataset(ds))
    return iter(ds)


def _batch_of(ds):
    return int(tf.data.experimental.get_structure(ds)[0].shape[0])


def prepared_step(stages, inner=None):
    """wrap(train_step): the step that first runs `stages` on the batch in order (the recipe's
    preparation of a raw batch with runtime.augment_on device, train.low_res's resize), then
    `inner(train_step)` (the data filter's ranking) or the step itself."""
    def wrap(train_step):
        step = inner(train_step) if inner else train_step

        def prepared(batch):
            for stage in stages:
                batch = stage(batch)
            return step(batch)

        return prepared

    return wrap


def batch_resizer(height, width):
    """A prepared batch with its images resized (bilinear, antialiased: no aliasing on the way down)."""
    def resize(batch):
        x = tf.image.resize(batch[0], (height, width), method="bilinear", antialias=True)
        return (tf.cast(x, batch[0].dtype), *batch[1:])

    return resize


def shadow_mover(weights):
    """(shadow variables holding copies of `weights()`, move(decay, reset)): one tf.function moves
    every shadow toward its weight, shadow = decay * shadow + (1 - decay) * weight, and with `reset`
    sets the weights to the shadows (train/averaging.py)."""
    shadow = [tf.Variable(w.numpy(), trainable=False) for w in weights()]

    @tf.function
    def moved(decay, reset):
        for average, w in zip(shadow, weights()):
            average.assign(decay * average + (1.0 - decay) * tf.cast(w, average.dtype))
            if reset:
                w.assign(tf.cast(average, w.dtype))

    return shadow, lambda decay, reset: moved(tf.constant(decay, tf.float32), reset)
