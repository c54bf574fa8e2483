"""Linear DropBlock schedule: keep_prob from 1.0 at the start of training to each layer's target
at the end (Ghiasi et al. found a fixed keep_prob from the start hurts)."""
import keras

from kclassify.layers.dropblock import DropBlock2D


def dropblock_layers(model):
    """Every DropBlock2D in the model, nested models included."""
    return [layer for layer in model._flatten_layers(include_self=False) if isinstance(layer, DropBlock2D)]


class DropBlockSchedule(keras.callbacks.Callback):
    """Sets current_keep_prob = 1 - (1 - keep_prob) * progress before each batch (by="step")
    or epoch (by="epoch"), progress going linearly from 0 at the first to 1 at the last.

    `epochs` and `steps_per_epoch` default to fit()'s; pass them when fit() runs only part of
    the schedule (fine-tuning phases, a resumed run: the epoch index fit() reports is absolute)."""

    def __init__(self, by="step", epochs=None, steps_per_epoch=None):
        super().__init__()
        if by not in ("step", "epoch"):
            raise ValueError(f"by must be 'step' or 'epoch', got {by!r}")
        self.by = by
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self._epoch = 0

    def _set(self, progress):
        progress = min(max(progress, 0.0), 1.0)
        for layer in dropblock_layers(self.model):
            layer.current_keep_prob.assign(1.0 - (1.0 - layer.keep_prob) * progress)

    def _total(self):
        epochs = self.epochs or self.params.get("epochs") or 1
        steps = self.steps_per_epoch or self.params.get("steps") or 1
        return epochs, steps

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        epochs, _ = self._total()
        if self.by == "epoch":
            self._set(epoch / max(epochs - 1, 1))

    def on_train_batch_begin(self, batch, logs=None):
        if self.by == "step":
            epochs, steps = self._total()
            self._set((self._epoch * steps + batch) / max(epochs * steps - 1, 1))
