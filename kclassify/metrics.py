"""Classification metrics in plain numpy, shared by Keras and TFLite evaluation. The report
and its text form live in the on-device kit (kclassify/kit/kitlib.py), the one copy both sides use."""
import numpy as np

from kclassify.kit import kitlib

classification_report = kitlib.classification_report
format_report = kitlib.format_report
format_confusion = kitlib.format_confusion


def cross_entropy(probs, labels):
    p = np.clip(np.asarray(probs)[np.arange(len(labels)), np.asarray(labels).astype(int)], 1e-7, 1.0)
    return float(-np.log(p).mean())


def top_k(probs, labels, k):
    """The share of images whose label is among the k most probable classes."""
    top = np.argsort(-np.asarray(probs), axis=1)[:, :k]
    return float((top == np.asarray(labels)[:, None]).any(axis=1).mean())
