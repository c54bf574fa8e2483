"""Shared fixtures: a small trained digits run (reused by evaluate/export/load tests), image
trees made on the fly, and helpers to run the CLI in a subprocess (exit codes, stderr)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Decoded-image and extraction caches go to a temporary folder, not the user's."""
    os.environ["KCLASSIFY_CACHE"] = str(tmp_path_factory.mktemp("cache"))


def run_cli(*args, cwd=None, env=None, timeout=600):
    """Run `python -m kclassify ARGS`; returns CompletedProcess with text output."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    return subprocess.run([sys.executable, "-m", "kclassify", *map(str, args)], cwd=cwd or ROOT,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


# The kclassify command in a process where some packages cannot be imported, as on a machine that
# lacks them (a GPU image with JAX and no TensorFlow; a CPU install with TensorFlow and no JAX):
# every import of a blocked top-level package fails, and the imports of one that kclassify's own code
# asks for are recorded (the probe that asks whether TensorFlow is installed aside), then printed as
# JSON on the last line of stderr when the process ends.
WITHOUT = """
import atexit, json, sys, traceback
blocked, asked = set(sys.argv[1].split(",")), []

class Without:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] not in blocked:
            return None
        frames = [f for f in traceback.extract_stack()[:-1] if "importlib" not in f.filename]
        importer = frames[-1] if frames else None
        if importer is not None and "/kclassify/" in importer.filename and importer.name != "tensorflow_installed":
            asked.append(f"{name} from {importer.filename.split('/kclassify/')[-1]}:{importer.lineno}")
        raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)

sys.meta_path.insert(0, Without())
atexit.register(lambda: print(json.dumps({"kclassify_asked_for": asked}), file=sys.stderr))
from kclassify.cli import main
sys.argv = ["kclassify", *sys.argv[2:]]
main()
"""


def run_cli_without(blocked, *args, env=None, timeout=600):
    """run_cli with the top-level packages `blocked` not importable: (CompletedProcess, the blocked
    imports kclassify's own code asked for)."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    proc = subprocess.run([sys.executable, "-c", WITHOUT, ",".join(blocked), *map(str, args)], cwd=ROOT,
                          env=full_env, capture_output=True, text=True, timeout=timeout)
    return proc, json.loads(proc.stderr.strip().splitlines()[-1])["kclassify_asked_for"]


class FakeClock:
    """A clock for time budgets: starts at `start`, moves `tick` seconds at every reading (so
    anything timed takes a little), and as far as `advance` or a callback says. Deterministic:
    a budget's plan is tested without waiting on, or asserting about, the wall clock."""

    def __init__(self, start=1_000_000.0, tick=0.001):
        self.now, self.tick = float(start), tick

    def __call__(self):
        self.now += self.tick
        return self.now

    def advance(self, seconds):
        self.now += seconds


def tiny_recipe(tmp_path, **sections):
    """A digits recipe that trains in seconds; sections override fields."""
    from kclassify.recipe import validate

    raw = {"name": "tiny",
           "data": {"source": "digits", "val_fraction": 0.2},
           "model": {"name": "resnet20", "params": {"width_mult": 0.5}},
           "train": {"epochs": 2, "batch_size": 64, "lr": 0.05, "warmup_epochs": 0.5},
           "runtime": {"seed": 0, "verbose": 0},
           "output": {"dir": str(tmp_path / "run"), "tensorboard": False}}
    for section, fields in sections.items():
        raw.setdefault(section, {}).update(fields)
    return validate(raw)


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """A ResNet-20 trained on the digits for 8 epochs (about 15 s); its run folder."""
    from kclassify.commands.fit import fit

    tmp = tmp_path_factory.mktemp("digits")
    recipe = tiny_recipe(tmp, model={"name": "resnet20", "params": {}}, train={"epochs": 8},
                         augment={"crop_pad": 1, "pad_mode": "constant"})
    return fit(recipe, echo=lambda *a: None)


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    """90 RGB 32x32 images of 3 classes that differ by colour (learnable in a few steps)."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 30)
    images = rng.integers(0, 80, (90, 32, 32, 3)).astype(np.uint8)
    for c in range(3):
        images[labels == c, :, :, c] += 150
    path = tmp_path_factory.mktemp("tiny") / "tiny.npz"
    np.savez(path, x=images, y=labels, class_names=np.array(["r", "g", "b"]))
    return path


def write_image(path, size=(20, 16), mode="RGB", fmt=None, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).convert(mode).save(path, format=fmt)


@pytest.fixture
def image_tree(tmp_path):
    """Three classes of small images in mixed formats, sizes and modes (6 each)."""
    root = tmp_path / "images"
    kinds = [("png", "RGB"), ("jpg", "L"), ("bmp", "RGB"), ("gif", "P"), ("png", "RGBA"), ("jpeg", "RGB")]
    for c, name in enumerate(["cat", "dog", "eel"]):
        (root / name).mkdir(parents=True)
        for i, (ext, mode) in enumerate(kinds):
            write_image(root / name / f"{i}.{ext}", size=(20 + i, 16 + c), mode=mode, seed=c * 10 + i)
    return root


def shared_file(rel):
    path = SHARED / rel
    if not path.exists():
        pytest.skip(f"needs {path} (the project's shared real data), which is absent here")
    return path
