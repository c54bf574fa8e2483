"""The numpy metrics shared by Keras and TFLite evaluation, checked against hand counts."""
import numpy as np

from kclassify.metrics import classification_report, format_report


def test_report_matches_hand_computation():
    labels = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0])
    probs = np.eye(3)[pred] * 0.8 + 0.1
    rep = classification_report(probs, labels, ["a", "b", "c"])
    assert rep["top1"] == 4 / 6 and rep["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    a, b, c = rep["per_class"]
    assert (a["precision"], a["recall"]) == (0.5, 0.5)
    assert (b["precision"], b["recall"]) == (2 / 3, 1.0) and abs(b["f1"] - 0.8) < 1e-9
    assert (c["precision"], c["recall"], c["support"]) == (1.0, 0.5, 2)
    assert rep["top5"] == 1.0
    text = format_report(rep)
    assert "macro avg" in text and "top-1 0.6667" in text
