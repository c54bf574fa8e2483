"""Registering kclassify's custom Keras objects, so that any .keras file it saved loads.

Every module that registers a Keras object (`keras.saving.register_keras_serializable(package=
"kclassify")`) is found by reading the package's source, so no hand-kept list can leave one out
(a list once left out the Muon optimizer, and its checkpoints did not load in a fresh process).
Importing this module imports nothing heavy: it is called right after `keras` is imported.
"""
import importlib
import sys
from functools import lru_cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
MARK = "register_keras_serializable("


@lru_cache(maxsize=1)
def registering_modules():
    """The dotted names of the package's modules that register Keras objects."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "registration.py" or MARK not in path.read_text(encoding="utf-8"):
            continue
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return tuple(names)


def register_custom_objects():
    """Import every registering module. One that is importing right now (it triggered the Keras
    import) registers its own objects as it finishes, so it is skipped here: importing it again
    would fail on names it has not defined yet."""
    for name in registering_modules():
        if name not in sys.modules:
            importlib.import_module(name)
