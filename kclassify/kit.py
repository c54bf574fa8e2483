"""The on-device kit (top-level `export/` in the repository, `kclassify/_kit` in a wheel).

Its `kitlib.py` is the one source of the LiteRT runner, the image preprocessing and the
metrics: kclassify loads it from there instead of keeping a copy.
"""
import importlib.util
import sys
from pathlib import Path

KIT_FILES = ("kitlib.py", "evaluate.py", "benchmark.py", "predict.py", "README.md")


def kit_dir():
    here = Path(__file__).resolve().parent
    for cand in (here.parent / "export", here / "_kit"):
        if (cand / "kitlib.py").is_file():
            return cand
    raise FileNotFoundError("kclassify's export kit (kitlib.py) is missing from this installation")


def kitlib():
    """The kit's library module (loaded once, by file path)."""
    name = "kclassify._kitlib"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, kit_dir() / "kitlib.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
