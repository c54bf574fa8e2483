"""Test-time augmentation: weighted views of each image, averaged. One definition serves
`kclassify evaluate`, the run's final report and `kclassify export --tta` (a .tflite that averages
the views itself), because it is a Keras wrapper model: raw pixels -> every view stacked on the
batch axis -> the network once -> a weighted average.

A view (dy, dx, flip, weight) reads pixel (i + dy, j + dx) of the reflect-padded image, mirrored
after the shift when `flip`. "logits" averaging takes the weighted mean of log-probabilities and a
softmax, which equals averaging the logits (softmax's shift cancels), as airbench does; "probs"
averages probabilities.
"""
import keras
import numpy as np
from keras import ops

EPS = 1e-7


def preset_views(name, shift=None):
    """[(dy, dx, flip, weight)] of a named preset; the weights sum to 1."""
    if name in (None, "none"):
        return [(0, 0, False, 1.0)]
    if name == "flip":
        return [(0, 0, False, 0.5), (0, 0, True, 0.5)]
    if name == "mirror_translate":  # airbench's tta_level 2
        s = shift or 1
        return ([(0, 0, f, 0.25) for f in (False, True)] +
                [(d, d, f, 0.125) for d in (-s, s) for f in (False, True)])
    if name == "crops":  # centre and four corners of a padded copy, each mirrored, equal weights
        s = shift or 4
        offsets = [(0, 0), (-s, -s), (-s, s), (s, -s), (s, s)]
        return [(dy, dx, f, 0.1) for dy, dx in offsets for f in (False, True)]
    raise ValueError(f"unknown TTA preset {name!r}")


def views_of(cfg):
    """The views an EvaluateConfig asks for."""
    return preset_views(cfg.tta, cfg.shift)


def least_sure(probs, fraction):
    """Indices (ascending) of the ceil(fraction x n) images whose top probability is lowest: where
    extra views can still change the answer (the 2025 CIFAR-10 speedrun record, hiverge, spends its
    views on the 15% least confident images)."""
    count = int(np.ceil(fraction * len(probs)))
    return np.sort(np.argsort(np.asarray(probs).max(axis=1), kind="stable")[:count])


def view_count(cfg):
    return 0 if cfg.tta == "none" else len(views_of(cfg))


@keras.saving.register_keras_serializable(package="kclassify")
class TTAViews(keras.layers.Layer):
    """Every view of a batch, stacked on the batch axis: (V*B, H, W, C)."""

    def __init__(self, views, **kwargs):
        super().__init__(**kwargs)
        self.views = [(int(dy), int(dx), bool(f)) for dy, dx, f in views]

    def call(self, x):
        pad = max([abs(d) for dy, dx, _ in self.views for d in (dy, dx)] + [0])
        h, w = x.shape[1], x.shape[2]
        padded = ops.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="reflect") if pad else x
        out = []
        for dy, dx, flip in self.views:
            v = padded[:, pad + dy:pad + dy + h, pad + dx:pad + dx + w, :]
            out.append(ops.flip(v, axis=2) if flip else v)
        return ops.concatenate(out, axis=0) if len(out) > 1 else out[0]

    def compute_output_shape(self, input_shape):
        batch = None if input_shape[0] is None else input_shape[0] * len(self.views)
        return (batch, *input_shape[1:])

    def get_config(self):
        return {**super().get_config(), "views": [list(v) for v in self.views]}


@keras.saving.register_keras_serializable(package="kclassify")
class TTAAverage(keras.layers.Layer):
    """(V*B, K) probabilities of the stacked views -> (B, K), weighted."""

    def __init__(self, weights, average="logits", **kwargs):
        super().__init__(**kwargs)
        self.view_weights = [float(w) for w in weights]
        self.average = average

    def call(self, probs):
        k = probs.shape[-1]
        v = len(self.view_weights)
        stacked = ops.reshape(probs, (v, -1, k))
        w = ops.reshape(ops.convert_to_tensor(self.view_weights, dtype=probs.dtype), (v, 1, 1))
        if self.average == "probs":
            return ops.sum(w * stacked, axis=0)
        return ops.softmax(ops.sum(w * ops.log(ops.clip(stacked, EPS, 1.0)), axis=0), axis=-1)

    def compute_output_shape(self, input_shape):
        return (None, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "weights": self.view_weights, "average": self.average}


def tta_model(model, views, average="logits"):
    """The model wrapped to average `views` (a list of (dy, dx, flip, weight))."""
    if len(views) == 1 and views[0][:3] == (0, 0, False):
        return model
    inputs = keras.Input(model.input_shape[1:], name="pixels")
    stacked = TTAViews([v[:3] for v in views], name="tta_views")(inputs)
    probs = model(stacked)
    out = TTAAverage([v[3] for v in views], average, name="tta_average", dtype="float32")(probs)
    return keras.Model(inputs, out, name=f"{model.name}_tta")
