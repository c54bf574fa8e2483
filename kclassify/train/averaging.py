"""Weight averaging: EMA (every step, every weight including BatchNorm statistics, with the
usual (1+n)/(10+n) warm-up of the decay) and SWA (Izmailov et al. 2018: the mean of the
weights at the end of each epoch from a start epoch, then BatchNorm statistics recomputed on
training data, since averaged weights invalidate them). The average is saved with each
checkpoint (ckpt/average-N.npz, N = epochs done) so a resumed run continues it exactly."""
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf


class WeightAverage(keras.callbacks.Callback):
    def __init__(self, cfg, model, run_dir, epochs_done=0):
        super().__init__()
        self.cfg, self.target, self.dir = cfg, model, Path(run_dir) / "ckpt"
        names = self.weights()
        self.shadow = [tf.Variable(w.numpy(), trainable=False) for w in names]
        self.count = 0  # EMA: updates so far; SWA: epochs averaged so far
        saved = self.dir / f"average-{epochs_done}.npz"
        if epochs_done and saved.exists():
            with np.load(saved) as z:
                self.count = int(z["count"])
                for var, i in zip(self.shadow, range(len(self.shadow))):
                    var.assign(z[f"w{i}"])

    def weights(self):
        if self.cfg.kind == "ema":
            return list(self.target.weights)
        return list(self.target.trainable_weights)

    def on_train_batch_end(self, batch, logs=None):
        if self.cfg.kind != "ema":
            return
        self.count += 1
        decay = min(self.cfg.momentum, (1.0 + self.count) / (10.0 + self.count))
        for shadow, w in zip(self.shadow, self.weights()):
            shadow.assign(decay * shadow + (1.0 - decay) * tf.cast(w, shadow.dtype))

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1 - self.cfg.start_epoch
        if self.cfg.kind == "swa" and done > 0 and done % self.cfg.cycle_epochs == 0:  # at each cycle's end
            self.count += 1
            for shadow, w in zip(self.shadow, self.weights()):
                shadow.assign(shadow + (tf.cast(w, shadow.dtype) - shadow) / self.count if self.count > 1 else w)
        self.save(epoch + 1)

    def save(self, epochs_done):
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f"average-{epochs_done}.tmp.npz"
        np.savez(tmp, count=self.count, **{f"w{i}": v.numpy() for i, v in enumerate(self.shadow)})
        tmp.replace(self.dir / f"average-{epochs_done}.npz")
        for old in self.dir.glob("average-*.npz"):
            if old.name != f"average-{epochs_done}.npz":
                old.unlink(missing_ok=True)

    def apply(self, bn_data=None):
        """Put the averaged weights into the model (SWA: then recompute BN statistics)."""
        if self.count == 0:
            return False
        for w, shadow in zip(self.weights(), self.shadow):
            w.assign(tf.cast(shadow, w.dtype))
        if self.cfg.kind == "swa" and bn_data is not None:
            recompute_bn(self.target, bn_data, self.cfg.bn_batches)
        return True


def recompute_bn(model, dataset, batches):
    """Set every BatchNorm's moving statistics to their plain average over `batches` batches
    (momentum i/(i+1) at batch i gives the cumulative mean)."""
    bns = [layer for layer in model._flatten_layers(include_self=False)
           if isinstance(layer, keras.layers.BatchNormalization)]
    if not bns:
        return
    saved = [layer.momentum for layer in bns]
    for layer in bns:
        layer.moving_mean.assign(tf.zeros_like(layer.moving_mean))
        layer.moving_variance.assign(tf.ones_like(layer.moving_variance))
    for i, batch in enumerate(dataset.take(batches)):
        for layer in bns:
            layer.momentum = i / (i + 1.0)
        model(batch[0], training=True)
    for layer, momentum in zip(bns, saved):
        layer.momentum = momentum
