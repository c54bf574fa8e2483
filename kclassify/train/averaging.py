"""Weight averaging, one callback for three kinds:

- ema: a shadow copy of every weight (BatchNorm statistics included) updated every `every` steps
  with the usual (1+n)/(10+n) warm-up of the decay; the saved model is the shadow.
- swa (Izmailov et al. 2018): the mean of the weights at the end of each epoch (or cycle) from a
  start epoch, then BatchNorm statistics recomputed on training data.
- lookahead, as airbench trains: every `every` steps the shadow moves toward the weights with
  decay momentum**every * progress**power and the weights are reset to the shadow; progress is
  step / planned steps, so the pull is 0 at the start and strongest at the end, where training
  finishes on the shadow.

The updates run as one compiled function (a Python loop over variables costs milliseconds a
step): a tf.function over the variables on TensorFlow, a jitted function of their values on JAX
(whose step state Keras' `Callback.model` attaches to the variables first); train/backends.py
gives the backend's. The averages are saved with every checkpoint, so a resumed run continues them
exactly.
"""
import itertools

import keras
import numpy as np
from keras import ops

from kclassify.train.backends import shadow_mover


class WeightAverage(keras.callbacks.Callback):
    def __init__(self, cfg, model, progress=None):
        super().__init__()
        self.cfg, self.target = cfg, model
        self.progress = progress or (lambda: 1.0)  # training progress in [0, 1] (lookahead's ramp)
        # Keras' Callback.model puts the JAX steps' state back into the variables
        self.shadow, self._move = shadow_mover(self.weights, lambda: self.model)
        self.count = 0  # ema / lookahead: updates so far; swa: snapshots averaged so far
        self.steps = 0

    def weights(self):
        if self.cfg.kind == "swa":
            return list(self.target.trainable_weights)
        return list(self.target.weights)

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.cfg.kind == "swa" or self.steps % self.cfg.every:
            return
        self.count += 1
        if self.cfg.kind == "ema":
            decay = min(self.cfg.momentum, (1.0 + self.count) / (10.0 + self.count))
            self._move(decay, False)
        else:
            decay = self.cfg.momentum ** self.cfg.every * min(self.progress(), 1.0) ** self.cfg.power
            self._move(decay, True)

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1 - self.cfg.start_epoch
        if self.cfg.kind == "swa" and done > 0 and done % self.cfg.cycle_epochs == 0:  # at each cycle's end
            self.count += 1
            self._move(1.0 - 1.0 / self.count, False)

    def arrays(self):
        """What a checkpoint keeps of the average."""
        return {"count": self.count, "steps": self.steps, **{f"w{i}": v.numpy() for i, v in enumerate(self.shadow)}}

    def restore(self, arrays):
        self.count, self.steps = int(arrays["count"]), int(arrays["steps"])
        for i, var in enumerate(self.shadow):
            var.assign(arrays[f"w{i}"])

    def apply(self, bn_data=None):
        """Put the averaged weights into the model (SWA: then recompute BN statistics)."""
        if self.count == 0:
            return False
        for w, shadow in zip(self.weights(), self.shadow):
            w.assign(ops.cast(shadow, w.dtype))
        if self.cfg.kind == "swa" and bn_data is not None:
            recompute_bn(self.target, bn_data, self.cfg.bn_batches)
        return True


def load_arrays(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def recompute_bn(model, batches_of, batches):
    """Set every BatchNorm's moving statistics to their plain average over the first `batches`
    batches of `batches_of` (a tf.data dataset or any iterable of (images, ...) batches; momentum
    i/(i+1) at batch i gives the cumulative mean)."""
    bns = [layer for layer in model._flatten_layers(include_self=False)
           if isinstance(layer, keras.layers.BatchNormalization)]
    if not bns:
        return
    saved = [layer.momentum for layer in bns]
    for layer in bns:
        # zeros and ones of the variables' shape (ops.zeros_like of a Keras variable fails on JAX)
        layer.moving_mean.assign(ops.zeros(layer.moving_mean.shape, layer.moving_mean.dtype))
        layer.moving_variance.assign(ops.ones(layer.moving_variance.shape, layer.moving_variance.dtype))
    for i, batch in enumerate(itertools.islice(batches_of, batches)):
        for layer in bns:
            layer.momentum = i / (i + 1.0)
        model(np.asarray(batch[0]), training=True)
    for layer, momentum in zip(bns, saved):
        layer.momentum = momentum
