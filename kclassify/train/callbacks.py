"""Callbacks: per-epoch checkpoints with resumable state, NaN guard, wall-clock accounting."""
import csv
import json
import math
import os
import time
from pathlib import Path

import keras


def write_json(path, obj):
    """Write JSON atomically (a kill never leaves half a file)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def read_state(run_dir):
    path = Path(run_dir) / "ckpt" / "state.json"
    return json.loads(path.read_text()) if path.exists() else None


def write_history_csv(history, path):
    if not history:
        return
    keys = ["epoch"] + [k for k in history[0] if k != "epoch"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(history)


class Checkpointer(keras.callbacks.Callback):
    """After every finished epoch: save the model with its optimizer state to ckpt/epoch-N.keras,
    then point ckpt/state.json at it (the commit point), then drop the older file. A kill at
    any moment leaves state.json naming a complete checkpoint. history.csv is rewritten from
    the state, so it never holds an epoch twice after a resume."""

    def __init__(self, run_dir, state=None):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "ckpt"
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        self.state = state or {"epoch": 0, "train_seconds": 0.0, "history": [], "file": None}
        self.diverged = None
        self.tags = {}  # extra columns for history rows, e.g. the fine-tuning phase
        self._t0 = None

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.time()

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.diverged = (self.state["epoch"] + 1, batch + 1, float(loss))
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.diverged:
            return  # keep the last good checkpoint
        seconds = time.time() - self._t0
        row = {"epoch": epoch, **{k: float(v) for k, v in (logs or {}).items()},
               "lr": float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)),
               "seconds": round(seconds, 2), **self.tags}
        name = f"epoch-{epoch + 1}.keras"
        self.model.save(self.ckpt_dir / name)
        old = self.state.get("file")
        self.state = {"epoch": epoch + 1, "train_seconds": self.state["train_seconds"] + seconds,
                      "history": self.state["history"] + [row], "file": name}
        write_json(self.ckpt_dir / "state.json", self.state)
        if old and old != name:
            (self.ckpt_dir / old).unlink(missing_ok=True)
        write_history_csv(self.state["history"], self.run_dir / "history.csv")
