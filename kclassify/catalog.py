"""What the registries hold, as a JSON file read without TensorFlow, so that a recipe is checked
completely (model names and parameters, augmentation ops and their arguments) in milliseconds,
before anything is imported or read. `tests/test_recipe.py` fails when the file and the live
registries disagree; after adding a registry entry, write it again:

    python -m kclassify.commands.catalog --write
"""
import json
from functools import lru_cache
from pathlib import Path

FILE = Path(__file__).with_name("catalog.json")


@lru_cache(maxsize=1)
def load():
    return json.loads(FILE.read_text())
