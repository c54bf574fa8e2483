"""The fork between the engine's TensorFlow pieces and its JAX pieces, in one place.

What the training engine runs is plain Keras except for: the compiled train step and the weight
averages' update (train/loop.py on TensorFlow under a tf.distribute strategy, train/jax_loop.py on
JAX), where the training batches come from (tf.data, data/pipeline.py, wherever TensorFlow is
installed; the numpy stream, data/numpy_stream.py, on JAX with runtime.augment_on device) and the
data filter (a TensorFlow step). This module picks them for the active backend and imports the
picked module inside the function on purpose: this is the TensorFlow-free boundary of the engine
(a JAX machine may have no TensorFlow, a TensorFlow one need not have JAX), so the JAX path with
the numpy stream never imports a TensorFlow module.
"""
import contextlib

import keras
import numpy as np

from kclassify.augment.device import device_preparer, step_key
from kclassify.data.batching import steps_per_epoch
from kclassify.data.numpy_stream import numpy_batches
from kclassify.layers.conv_grad import filter_gradients


def on_jax():
    return keras.backend.backend() == "jax"


def numpy_fed(recipe):
    """Whether training batches come from the numpy stream as raw uint8 batches (JAX with
    runtime.augment_on device: the step prepares them) rather than from tf.data."""
    return on_jax() and recipe.runtime.augment_on == "device"


def worker_of(strategy):
    """(this worker's index, number of workers): (0, 1) unless a tf.distribute strategy spans workers."""
    if on_jax():
        return 0, 1  # keras.distribution splits each batch over the devices inside one process
    from kclassify.train.loop import worker_of as tf_worker_of

    return tf_worker_of(strategy)


def train_stream(recipe, split, num_classes, strategy, batch, spe, start_step, mix, worker, raw):
    """An iterator over the training batches from global step `start_step`; `raw`: before the
    recipe's preparation, which the step then runs (runtime.augment_on device)."""
    if numpy_fed(recipe):
        return numpy_batches(split, batch, spe, recipe.runtime.seed, start_step, worker)
    from kclassify.data.pipeline import recipe_train_dataset
    from kclassify.train.loop import distribute

    return distribute(strategy, lambda index, workers: recipe_train_dataset(
        recipe, split, num_classes, mix=mix, start_step=start_step, worker=(index, workers), raw=raw))


def prepared_batches(recipe, split, num_classes, mix=False):
    """The recipe's prepared training batches (float images, targets) from step 0, as the step trains
    on them: for SWA's BatchNorm statistics and the augmentation preview. From the numpy stream they
    are prepared as the JAX step prepares them (step 0 drawn as training's step 0)."""
    if not numpy_fed(recipe):
        from kclassify.data.pipeline import recipe_train_dataset

        return recipe_train_dataset(recipe, split, num_classes, mix=mix)
    batch = min(recipe.train.batch_size, len(split))
    spe = steps_per_epoch(split, batch, recipe.train.steps_per_epoch)
    prepare, seed = device_preparer(recipe, num_classes, mix), recipe.runtime.seed
    return (tuple(np.asarray(v) for v in prepare(images, labels, mask, step_key(seed, step)))
            for images, labels, mask, step in numpy_batches(split, batch, spe, seed))


def train_function(trainer, strategy, recipe, split, num_classes, mix, raw, data_filter=None, resize=None):
    """fn(iterator) -> logs: one compiled train step on the next batch. `raw`: the step prepares the
    raw batch first (the recipe's preparation: keras.ops on JAX, the host stream's own functions on
    TensorFlow); `data_filter` ranks the batch and `resize` (height, width) shrinks it, on TensorFlow
    only (runtime.check_backend refuses them elsewhere)."""
    if on_jax():
        from kclassify.train.jax_loop import device_step, make_jax_train_function

        return make_jax_train_function(trainer, device_step(recipe, num_classes, mix) if raw else None)
    from kclassify.data.pipeline import recipe_preparer
    from kclassify.train.loop import batch_resizer, make_train_function, prepared_step

    stages = ([recipe_preparer(recipe, split, num_classes, mix)] if raw else []) + \
        ([batch_resizer(*resize)] if resize else [])
    inner = data_filter.wrap if data_filter is not None else None
    wrap = prepared_step(stages, inner) if stages else inner
    return make_train_function(trainer, strategy, recipe.runtime.jit_compile, wrap)


def shadow_mover(weights, attach):
    """(shadow variables, move(decay, reset)) of the weight averages (train/averaging.py); `attach()`
    puts the JAX steps' state back into the variables first."""
    if on_jax():
        from kclassify.train.jax_loop import shadow_mover as jax_mover

        return jax_mover(weights, attach)
    from kclassify.train.loop import shadow_mover as tf_mover

    return tf_mover(weights)


def data_filter(cfg, proxy, batch):
    """train.data_filter's DataFilter around its built proxy (a TensorFlow step: refused elsewhere)."""
    from kclassify.train.data_filter import DataFilter

    return DataFilter(cfg, proxy, batch)


def routed_gradients(model, batch, mode, echo):
    """runtime.conv_filter_grad's routing of convolution filter gradients while the block runs
    (TensorFlow's kernels; on JAX check_backend set it to native: nothing to route)."""
    if on_jax():
        return contextlib.nullcontext([])
    return filter_gradients(model, batch, mode, echo)
