"""PNG plots of training curves and confusion matrices (matplotlib, no display needed)."""
import csv

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_history(history_csv, out_png):
    """Loss and top-1 for train and validation per epoch, from Keras' CSVLogger file."""
    with open(history_csv) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    plt = _pyplot()
    epochs = [int(r["epoch"]) + 1 for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("loss", "top1")):
        for prefix, style in (("", "-"), ("val_", "--")):
            # validation may run every few epochs (train.val_every): plot the epochs that have it
            points = [(e, float(r[prefix + key])) for e, r in zip(epochs, rows) if r.get(prefix + key)]
            if points:
                ax.plot(*zip(*points), style, marker="." if len(points) < len(rows) else None,
                        label=(prefix or "train_") + key)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


def plot_confusion(confusion, class_names, out_png):
    """Row-normalized confusion matrix; class labels shown when there are at most 30."""
    plt = _pyplot()
    cm = np.asarray(confusion, dtype=float)
    cm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    k = len(class_names)
    size = min(4 + 0.35 * k, 16)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues", vmin=0, vmax=1)
    if k <= 30:
        ax.set_xticks(range(k), class_names, rotation=90)
        ax.set_yticks(range(k), class_names)
        for i in range(k):
            for j in range(k):
                if cm[i, j] >= 0.01:
                    ax.text(j, i, f"{cm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if cm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
