"""Muon on convolution filters, the rest of the network on SGD: airbench94_muon's split, built
from Keras' own pieces (keras.optimizers.Muon's Newton-Schulz iteration, MultiOptimizer +
OptimizerMap to route the variables).

Keras' Muon orthogonalizes only 2-D variables and sends a 4-D conv kernel to its AdamW branch,
so a conv net would get no Muon at all. ConvMuon flattens a kernel (kh, kw, cin, cout) to the
(kh * kw * cin, cout) matrix that the convolution multiplies by (the transpose of airbench's
(cout, cin * kh * kw)) and, as airbench94_muon does, uses plain heavy-ball momentum with
Nesterov, rescales each filter bank to norm sqrt(cout) before the step (the weights live on a
sphere, so a step's size is its angle), and takes the orthogonalized update at the raw rate
(no Moonlight rms scaling, no weight decay on the filters). The Newton-Schulz iteration may run
in bfloat16 (airbench94_muon does): its input is normalized to norm 1, so bfloat16's range is
never tested, and its eight mantissa bits are what the bfloat16 convolutions see anyway."""
import re

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kclassify")
class ConvMuon(keras.optimizers.Muon):
    """keras.optimizers.Muon for 2-D and 4-D (conv) kernels; see the module's docstring."""

    def __init__(self, learning_rate=0.24, momentum=0.6, nesterov=True, normalize_weights=True, ns_steps=5,
                 ns_dtype=None, **kwargs):
        kwargs.setdefault("weight_decay", None)
        kwargs.setdefault("rms_rate", None)
        kwargs.setdefault("exclude_embeddings", False)
        super().__init__(learning_rate=learning_rate, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                         **kwargs)
        self.normalize_weights = normalize_weights
        self.ns_dtype = ns_dtype  # None: the variable's own dtype

    def _should_use_adamw(self, variable):
        return len(variable.shape) not in (2, 4)  # everything it is given should be a kernel

    def _muon_update_step(self, gradient, variable, lr, m):
        gradient = ops.cast(gradient, variable.dtype)
        self.assign(m, ops.add(ops.multiply(m, self.momentum), gradient))  # airbench: buf = m * buf + g
        g = ops.add(gradient, ops.multiply(m, self.momentum)) if self.nesterov else m
        shape = tuple(variable.shape)
        matrix = ops.reshape(g, (-1, shape[-1]))
        if self.ns_dtype:
            matrix = ops.cast(matrix, self.ns_dtype)
        update = ops.reshape(self.zeropower_via_newtonschulz5(matrix, self.ns_steps), shape)
        if self.normalize_weights:
            norm = ops.sqrt(ops.sum(ops.square(variable)))
            self.assign(variable, ops.multiply(variable, ops.sqrt(float(shape[-1])) / (norm + 1e-12)))
        self.assign_sub(variable, ops.multiply(ops.cast(lr, variable.dtype), ops.cast(update, variable.dtype)))

    def get_config(self):
        return {**super().get_config(), "normalize_weights": self.normalize_weights, "ns_dtype": self.ns_dtype}


@keras.saving.register_keras_serializable(package="kclassify")
class ScaledSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Another schedule times a constant: Muon's rate follows the run's schedule (warm-up, decay,
    the budget's total and a recovery's scale, all set on the shared schedule) at its own peak."""

    def __init__(self, schedule, factor):
        self.schedule, self.factor = schedule, float(factor)

    def __call__(self, step):
        return self.schedule(step) * self.factor

    def get_config(self):
        return {"schedule": keras.saving.serialize_keras_object(self.schedule), "factor": self.factor}

    @classmethod
    def from_config(cls, config):
        return cls(keras.saving.deserialize_keras_object(config["schedule"]), config["factor"])


def muon_variables(model):
    """The trainable kernels of the model's ordinary convolutions (not depthwise ones, whose
    (kh, kw, c, 1) filters are no matrix to orthogonalize)."""
    out = []
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.Conv2D) and not isinstance(layer, keras.layers.DepthwiseConv2D):
            kernel = getattr(layer, "kernel", None)
            if kernel is not None and kernel.trainable and layer.trainable:
                out.append(kernel)
    return out


@keras.saving.register_keras_serializable(package="kclassify")
class MuonSGD(keras.optimizers.MultiOptimizer):
    """MultiOptimizer of ConvMuon (the conv kernels, by exact variable path) and the given SGD
    (everything else). Exposes the SGD's schedule as its own `_learning_rate`, so the engine
    reads and sets one schedule for both."""

    @property
    def _learning_rate(self):
        return self._optimizer_map.default_optimizer._learning_rate

    @_learning_rate.setter
    def _learning_rate(self, value):  # the base constructor sets 0.0; the SGD's schedule is the one
        pass

    @property
    def learning_rate(self):
        return self._optimizer_map.default_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        pass

    def apply(self, grads, trainable_variables=None):
        """MultiOptimizer.apply insists on every variable it was built with; a segment that freezes
        one (the whitening bias after train.whiten_bias_epochs) hands it a subset, which each
        inner optimizer takes as Keras optimizers do."""
        if trainable_variables is None or len(grads) == len(self._trainable_variables_indices):
            return super().apply(grads, trainable_variables)
        groups = [[] for _ in self._inner_optimizers]
        for grad, var in zip(grads, trainable_variables):
            groups[self._var_to_optimizer_idx[self._var_key(var)]].append((grad, var))
        for opt, pairs in zip(self._inner_optimizers, groups):
            if pairs:
                opt.apply([g for g, _ in pairs], [v for _, v in pairs])
        self._iterations.assign_add(1)


def ns_dtype(cfg):
    """The Newton-Schulz iteration's dtype for train.muon (cfg): auto follows the global policy,
    which the run has set by the time it builds its optimizer."""
    if cfg.ns_dtype != "auto":
        return cfg.ns_dtype
    return "bfloat16" if keras.mixed_precision.global_policy().compute_dtype == "bfloat16" else "float32"


def muon_sgd(sgd, model, cfg):
    """MuonSGD of `sgd` for every variable but the conv kernels, ConvMuon for those, at cfg.lr
    times the run's schedule shape (cfg: the recipe's train.muon)."""
    schedule = sgd._learning_rate
    if not isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):  # Muon follows its shape
        raise TypeError(f"train.optimizer muon needs the SGD's rate as a schedule, got {schedule!r}")
    rate = ScaledSchedule(schedule, cfg.lr / float(schedule.base_lr))
    muon = ConvMuon(rate, momentum=cfg.momentum, nesterov=cfg.nesterov,
                    normalize_weights=cfg.normalize_weights, ns_steps=cfg.ns_steps, ns_dtype=ns_dtype(cfg))
    kernels = muon_variables(model)
    routes = keras.optimizers.OptimizerMap(sgd, {re.escape(v.path): muon for v in kernels})
    return MuonSGD(routes)

