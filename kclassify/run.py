"""The run folder, owned in one place.

    runs/<name>/
      recipe.yaml       the resolved recipe (what a resume must match)
      labels.json       class names, input shape, split sizes
      run.lock          who holds the folder (pid, host, command); a flock makes it exclusive
      ckpt/state.json   the commit point: finished steps/epochs, history, plan, checkpoint list
      ckpt/*.keras      checkpoints (model + optimizer state), newest last in the list
      model.keras       the final inference network
      metrics.json, history.csv, val_report.json, val_predictions.npz, exports, report.html

Everything that reads or writes these files asks a `Run`: fit and finetune create or resume one
(`Run.start`), evaluate, export, qat and prune open a finished one (`Run.load`). Nothing here
imports TensorFlow until a model is loaded.
"""
import json
import os
from pathlib import Path

from kclassify.errors import ModelFileError

MODEL_FILE = "model.keras"


def write_json(path, obj):
    """Write JSON atomically (a kill never leaves half a file)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def read_json(path, default=None):
    path = Path(path)
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return default


class Run:
    """One run folder. `Run.load(path)` opens an existing one for reading."""

    def __init__(self, path):
        self.dir = Path(path)

    # ------------------------------------------------------------------ opening

    @classmethod
    def load(cls, path):
        """An existing run folder (it must hold recipe.yaml); ModelFileError otherwise."""
        run = cls(path)
        if not (run.dir / "recipe.yaml").is_file():
            raise ModelFileError(f"{run.dir} is not a kclassify run folder (no recipe.yaml inside)")
        return run

    @staticmethod
    def resolve(path):
        """A .keras file or a run folder -> (model file, Run or None). A .keras file inside a run
        folder (model.keras, a checkpoint) belongs to that run."""
        p = Path(path)
        if p.is_dir():
            if not (p / MODEL_FILE).exists():
                raise ModelFileError(f"{p} is not a finished run folder (no {MODEL_FILE} inside)")
            return p / MODEL_FILE, Run.load(p)
        if not p.exists():
            raise ModelFileError(f"model not found: {str(path)!r}")
        for folder in (p.parent, p.parent.parent):
            if (folder / "recipe.yaml").is_file():
                return p, Run(folder)
        return p, None

    # ------------------------------------------------------------------ reading

    def file(self, name):
        return self.dir / name

    @property
    def model_path(self):
        return self.dir / MODEL_FILE

    @property
    def recipe(self):
        from kclassify.recipe import load_recipe

        return load_recipe(self.dir / "recipe.yaml")

    @property
    def labels(self):
        return read_json(self.dir / "labels.json", {})

    @property
    def class_names(self):
        return self.labels.get("class_names")

    @property
    def metrics(self):
        return read_json(self.dir / "metrics.json", {})

    def load_model(self):
        from kclassify.evaluate import load_model

        return load_model(self.model_path)[0]

    def data(self):
        """The run's data (train and validation splits), loaded as its recipe says."""
        from kclassify.data import load_data

        recipe = self.recipe
        return load_data(recipe.data, recipe.runtime.seed)

    def write_json(self, name, obj):
        write_json(self.dir / name, obj)
