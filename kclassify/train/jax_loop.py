"""The compiled pieces of kclassify's training loop on Keras' JAX backend: the train step (with the
recipe's batch preparation inside it, runtime.augment_on device) and the weight averages' update
(train/loop.py holds TensorFlow's; train/backends.py picks). No TensorFlow is imported here.

On JAX a train step is a pure function of the state (trainable, non-trainable, optimizer and
metric variables) and a batch. Keras' own `fit` keeps that state outside the variables during an
epoch and puts it back (`jax_state_sync`) where something must read the model; kclassify's loop
does the same with Keras' own `train_step` and its own bookkeeping: `attach_state` wherever the
loop reads or writes a variable between steps (validation, checkpoints, weight averages, a new
plan of the schedule, metric resets), after which the next step gathers the state again.
Reading a variable between steps without it fails loudly: the step donates the state's buffers.
"""
import jax
import keras
import numpy as np
from keras import tree

from kclassify.augment.device import device_preparer, step_key


def place(array):
    """A batch's array (tf.data's tensor, or numpy) as the step takes it: split along the batch axis
    over the devices of a keras.distribution (runtime.strategy mirrored), else as numpy."""
    array = np.asarray(array)
    dist = keras.distribution.distribution()
    if dist is None or array.ndim == 0:  # a step's index is no batch
        return array
    return jax.device_put(array, dist.get_data_layout(array.shape).backend_layout)


STATE = ("trainable_variables", "non_trainable_variables", "optimizer_variables", "metrics_variables")


def make_jax_train_function(trainer, wrap=None):
    """One jitted training step on the next batch of `iterator`; returns the step's logs.
    `wrap(train_step)` gives the step that runs instead (stateless: (state, batch) -> (logs, state))."""
    step = wrap(trainer.train_step) if wrap else trainer.train_step
    compiled = jax.jit(step, donate_argnums=0)

    def train_function(iterator):
        if getattr(trainer, "_jax_state_synced", True):
            state = trainer._get_jax_state(trainable_variables=True, non_trainable_variables=True,
                                           optimizer_variables=True, metrics_variables=True)
            trainer._jax_state_synced = False
        else:
            held = trainer._jax_state  # a Keras model tracks what it is given: back to plain lists
            state = tuple(list(held[k]) for k in STATE)
        batch = tree.map_structure(place, next(iterator))
        logs, state = compiled(state, batch)
        trainer._jax_state = dict(zip(STATE, state))
        return logs

    return train_function


def device_step(recipe, num_classes, mix):
    """wrap(train_step): the step that prepares the numpy stream's raw batch itself (augment/device.py),
    drawing its random numbers from the run's seed and the step's index."""
    prepare, seed = device_preparer(recipe, num_classes, mix), recipe.runtime.seed

    def wrap(train_step):
        def step(state, batch):
            images, labels, mask, index = batch
            return train_step(state, prepare(images, labels, mask, step_key(seed, index)))

        return step

    return wrap


def shadow_mover(weights, attach):
    """(shadow variables holding copies of `weights()`, move(decay, reset)): one jitted function of
    the values moves every shadow toward its weight, and with `reset` the weights are set to the
    shadows. `attach()` first puts the compiled steps' state back into the variables (Keras'
    `Callback.model` does)."""
    shadow = [keras.Variable(w.numpy(), trainable=False, dtype=w.dtype) for w in weights()]

    @jax.jit
    def moved(averages, values, decay):
        return [decay * a + (1.0 - decay) * w.astype(a.dtype) for a, w in zip(averages, values)]

    def move(decay, reset):
        attach()
        values = moved([a.value for a in shadow], [w.value for w in weights()], np.float32(decay))
        for average, value in zip(shadow, values):
            average.assign(value)
        if reset:  # copies: the next step donates the weights' buffers, which the shadow must keep
            for w, value in zip(weights(), values):
                w.assign(jax.numpy.array(value, dtype=w.dtype, copy=True))

    return shadow, move
