"""Writes kclassify/catalog.json from the live registries (imports Keras and TensorFlow):

    python -m kclassify.commands.catalog --write
"""
import inspect
import json
import sys

from kclassify.augment.registry import AUGMENTS
from kclassify.catalog import FILE
from kclassify.data.sources import SOURCES
from kclassify.models import MODELS, model_params


def build():
    """The catalog from the live registries (imports Keras and TensorFlow)."""
    models = {}
    for name in MODELS.names():
        info = MODELS.info(name)
        models[name] = {"params": sorted(model_params(name)), "family": info.get("family"),
                        "backbone": info.get("backbone") is not None}
    augments = {name: sorted(p for p in inspect.signature(AUGMENTS.get(name)).parameters) for name in AUGMENTS.names()}
    return {"models": models, "augmentations": augments, "sources": SOURCES.names()}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    current = build()
    if "--write" in argv:
        FILE.write_text(json.dumps(current, indent=1, sort_keys=True) + "\n")
        print(f"wrote {FILE}: {len(current['models'])} models, {len(current['augmentations'])} augmentations")
        return 0
    same = FILE.exists() and json.loads(FILE.read_text()) == current
    print("catalog is up to date" if same else f"{FILE} is stale: run python -m kclassify.commands.catalog --write")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
