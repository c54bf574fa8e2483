"""The compiled pieces of kclassify's training loop, for every tf.distribute strategy.

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
