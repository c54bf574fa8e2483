"""Loading a saved model: the one way a .keras file (or a run folder's model.keras) becomes a
Keras model, with kclassify's custom objects registered and a clear error for anything else."""
from pathlib import Path

import keras

from kclassify.errors import ModelFileError
from kclassify.registration import register_custom_objects

MODEL_FILE = "model.keras"


def model_file(path):
    """The .keras file that `path` names: the file itself, or a folder's model.keras."""
    p = Path(path)
    if p.is_dir():
        if not (p / MODEL_FILE).exists():
            raise ModelFileError(f"{p} is not a finished run folder (no {MODEL_FILE} inside)")
        return p / MODEL_FILE
    if not p.exists():
        raise ModelFileError(f"model not found: {str(path)!r}")
    return p


def load_model(path):
    """The model in a .keras file or run folder (uncompiled)."""
    register_custom_objects()
    file = model_file(path)
    try:
        return keras.models.load_model(file, compile=False)
    except Exception as exc:
        raise ModelFileError(f"{file} is not a loadable Keras model ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:200]})") from None
