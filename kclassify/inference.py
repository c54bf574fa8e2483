"""Inference, owned in one place: one Predictor (batched, compiled once per model, outside any
replica context so every worker may run it), used by validation while training, the final
evaluation, TTA, `kclassify evaluate`, calibration checks, export measurement and QAT measurement."""
import json
import weakref
from pathlib import Path

import keras
import numpy as np

from kclassify.data.batching import eval_batches
from kclassify.data.sources import Split
from kclassify.data.splits import take
from kclassify.metrics import classification_report, cross_entropy
from kclassify.plots import plot_confusion
from kclassify.tta import least_sure, tta_model

_PREDICTORS = weakref.WeakKeyDictionary()


def predictor(model):
    """The model's Predictor, made once (each new compiled function traces again)."""
    if model not in _PREDICTORS:
        _PREDICTORS[model] = Predictor(model)
    return _PREDICTORS[model]


class Predictor:
    """Batched inference outside any replica context (every worker may run it; no collectives):
    validation during training, the final report, TTA views, calibration checks."""

    def __init__(self, model):
        self.model = model
        self._fn = jax_forward(model) if keras.backend.backend() == "jax" else tf_forward(model)

    def __call__(self, batches):
        """Probabilities (float32 numpy) for an iterable of image batches (data.batching.eval_batches)."""
        outs = [self.batch(images) for images in batches]
        return np.concatenate(outs).astype(np.float32) if outs else np.zeros((0, 0), np.float32)

    def batch(self, images):
        """Probabilities (numpy) for one batch of images (uint8 or float pixels)."""
        return np.asarray(self._fn(np.asarray(images, np.float32)))


def tf_forward(model):
    """The model's forward pass as one tf.function for float32 batches of any size."""
    import tensorflow as tf  # the backend's own module, here at the fork: a JAX process may have no TensorFlow

    return tf.function(lambda x: model(x, training=False),
                       input_signature=[tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)])


def jax_forward(model):
    """The model's forward pass jitted on JAX, with the variables' current values as arguments (a
    jitted closure would keep the values it saw when it was traced)."""
    import jax  # the backend's own module, here at the fork: a TensorFlow process may have no JAX

    @jax.jit
    def forward(trainable, non_trainable, images):
        return model.stateless_call(trainable, non_trainable, images, training=False)[0]

    widest = [0]

    def call(images):
        n = len(images)
        widest[0] = max(widest[0], n)  # a dataset's last, smaller batch is padded: one compile, not two
        padded = np.concatenate([images, np.zeros((widest[0] - n, *images.shape[1:]), np.float32)]) \
            if n < widest[0] else images
        return forward([v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables],
                       padded)[:n]

    return call


def predict(model, images, batch_size=None, views=1):
    """Probabilities for uint8 images (an array, a Split or a streamed split); batch_size None: one
    that fits the image size and the model's test-time `views` (batching.eval_batch_size)."""
    split = images if hasattr(images, "labels") else Split(images, np.zeros(len(images), np.int32))
    return predictor(model)(eval_batches(split, batch_size, views))


def evaluate_model(model, split, class_names, batch_size=None, views=None, average="logits", fraction=1.0,
                   plain=None):
    """(report, probabilities) on a split; with `views` (kclassify.tta), the weighted average of
    the test-time views: for every image or, with `fraction` < 1, for that share of the images the
    plain view is least sure of, the rest keeping their plain probabilities (`plain`: those
    probabilities when the caller has them)."""
    if views and fraction < 1:
        probs = plain if plain is not None else predict(model, split, batch_size)
        chosen = least_sure(probs, fraction)
        probs = probs.copy()
        probs[chosen] = predict(tta_model(model, views, average), take(split, chosen), batch_size, len(views))
    else:
        probs = predict(tta_model(model, views, average) if views else model, split, batch_size, len(views or [None]))
    report = classification_report(probs, split.labels, class_names)
    report["loss"] = cross_entropy(probs, split.labels)
    return report, probs


def write_evaluation(report, out_dir, prefix, plots=True):
    """<prefix>_report.json (everything) and <prefix>_confusion.json/.png."""
    out_dir = Path(out_dir)
    (out_dir / f"{prefix}_report.json").write_text(json.dumps(report, indent=1))
    (out_dir / f"{prefix}_confusion.json").write_text(
        json.dumps({"class_names": report["class_names"], "matrix": report["confusion"]}))
    if plots:
        plot_confusion(report["confusion"], report["class_names"], out_dir / f"{prefix}_confusion.png")
