"""Optimizer, loss and metrics from a TrainConfig."""
import keras

from kclassify.train import schedules  # a module import: safe while schedules is half-initialized
from kclassify.train.muon import muon_sgd


def make_optimizer(train, steps_per_epoch, model, multipliers=(), total_steps=None, learning_rate=None):
    """SGD (momentum, Nesterov), AdamW, or Muon on the conv filters with SGD on the rest
    (train/muon.py), on the recipe's schedule; weight decay skips biases and BatchNorm
    parameters (unless train.bn_weight_decay). `multipliers` [(variable, factor)] scale
    the learning rate per variable (discriminative fine-tuning rates, BN bias lr).

    Recipes give weight decay as the papers do: an L2 term added to the gradient. Keras applies
    decay decoupled (w -= lr * wd * w, outside momentum); with momentum m the coupled form is
    amplified by 1/(1-m) in steady state, so SGD gets wd / (1 - m) to match the papers.
    AdamW is decoupled by definition and takes the value as given. Decay uses the base rate, not
    a variable's multiplied one (airbench decays its x64 BN biases by the same amount).
    `learning_rate` (a callable) replaces the recipe's schedule: the data filter's proxy follows
    the model's rate at the model's step.
    """
    lr = learning_rate or schedules.schedule_from(train, steps_per_epoch, total_steps)
    wd = train.weight_decay or None
    multipliers = [(v, m) for v, m in multipliers if m != 1.0]
    if train.optimizer in ("sgd", "muon"):
        cls = GroupSGD if multipliers else keras.optimizers.SGD
        opt = cls(lr, momentum=train.momentum, nesterov=train.nesterov,
                  weight_decay=wd / (1.0 - train.momentum) if wd else None)
    else:
        cls = GroupAdamW if multipliers else keras.optimizers.AdamW
        opt = cls(lr, weight_decay=wd or 0.0)
    if wd and not train.bn_weight_decay:
        opt.exclude_from_weight_decay(var_list=[v for v in model.trainable_variables if len(v.shape) <= 1])
    if multipliers:
        opt.set_lr_multipliers(multipliers)
    if train.optimizer == "muon":  # the SGD keeps what the filters do not take
        opt = muon_sgd(opt, model, train.muon)
    if learning_rate is None:
        lr.adjustable(opt)
    return opt


def make_loss(train):
    # Label smoothing happens in the input pipeline (both formulas, before MixUp/CutMix), so
    # the loss is plain cross-entropy and validation loss is measured on true labels.
    return keras.losses.CategoricalCrossentropy()


def make_metrics(num_classes):
    metrics = [keras.metrics.CategoricalAccuracy(name="top1")]
    if num_classes > 5:
        metrics.append(keras.metrics.TopKCategoricalAccuracy(k=5, name="top5"))
    return metrics


class _LRMultipliers:
    """Per-variable learning-rate multipliers (discriminative fine-tuning rates): the update of
    variable v uses lr * multipliers[v]. Keyed with the optimizer's own `_var_key`, because the
    TF backend hands update_step the underlying tf.Variable (or a replica's component under a
    distribution strategy), not the Keras variable; a resumed run rebuilds them from the recipe."""

    def set_lr_multipliers(self, pairs):
        self._lr_mult = {self._var_key(v): float(m) for v, m in pairs}

    def update_step(self, gradient, variable, learning_rate):
        mult = getattr(self, "_lr_mult", {}).get(self._var_key(variable), 1.0)
        if mult != 1.0:
            learning_rate = learning_rate * mult
        return super().update_step(gradient, variable, learning_rate)


@keras.saving.register_keras_serializable(package="kclassify")
class GroupSGD(_LRMultipliers, keras.optimizers.SGD):
    """SGD with per-variable learning-rate multipliers."""


@keras.saving.register_keras_serializable(package="kclassify")
class GroupAdamW(_LRMultipliers, keras.optimizers.AdamW):
    """AdamW with per-variable learning-rate multipliers."""
