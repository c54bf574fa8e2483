"""Frozen-feature classifiers for very small data: a linear probe (multinomial logistic
regression on pooled backbone features, written into the model's dense head so the result is an
ordinary Keras model that evaluates and exports like any other) and k-NN on cosine similarity."""
import json

import keras
import numpy as np
from sklearn.linear_model import LogisticRegression

from kclassify.inference import predict
from kclassify.metrics import classification_report, format_report


def features(model, images, batch_size=64):
    last = "head_l2norm" if any(layer.name == "head_l2norm" for layer in model.layers) else "head_pool"
    return predict(keras.Model(model.input, model.get_layer(last).output), images, batch_size)


def knn_probs(train_feats, train_labels, val_feats, k, num_classes):
    """Class votes of the k nearest training images by cosine similarity, as probabilities."""
    def unit(a):
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)

    sims = unit(val_feats) @ unit(train_feats).T
    nearest = np.argsort(-sims, axis=1)[:, :k]
    votes = np.zeros((len(val_feats), num_classes))
    for j in range(k):
        votes[np.arange(len(val_feats)), train_labels[nearest[:, j]]] += 1
    return votes / k


def fit_linear_head(model, train_feats, train_labels, num_classes):
    """Fit logistic regression on the features and copy it into head_dense (same softmax)."""
    clf = LogisticRegression(max_iter=2000, C=1.0)
    clf.fit(train_feats, train_labels)
    kernel = np.zeros((train_feats.shape[1], num_classes), np.float32)
    bias = np.full(num_classes, -1e4, np.float32)  # classes absent from training never win
    kernel[:, clf.classes_] = clf.coef_.T
    bias[clf.classes_] = clf.intercept_
    model.get_layer("head_dense").set_weights([kernel, bias])


def probe(recipe, data, model, run, echo):
    """k-NN (its index and metrics written here) or the linear probe (its head fitted); returns
    whether the model goes on to the run's finish like a trained one."""
    k = len(data.class_names)
    train_feats = features(model, data.train)
    if recipe.finetune.mode == "knn":
        val_feats = features(model, data.val)
        probs = knn_probs(train_feats, data.train.labels, val_feats, recipe.finetune.knn_k, k)
        report = classification_report(probs, data.val.labels, data.class_names)
        echo(format_report(report, title=f"{recipe.finetune.knn_k}-NN on frozen {recipe.model.name} features"))
        np.savez(run.dir / "knn_index.npz", features=train_feats, labels=data.train.labels)
        run.write_json("metrics.json", {"val": {"top1": report["top1"], "top5": report["top5"]},
                                        "mode": "knn", "k": recipe.finetune.knn_k, "epochs": 0})
        (run.dir / "val_report.json").write_text(json.dumps(report, indent=1))
        return False
    fit_linear_head(model, train_feats, data.train.labels, k)
    return True
