"""The on-device kit (kclassify/kit/): numpy + pillow + ai-edge-litert only, same answers as kclassify."""
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT

KIT = ROOT / "kclassify" / "kit"
# Run a kit script with TensorFlow, Keras and kclassify made unimportable: any import of them
# (direct or through a dependency) fails the script, and the modules loaded are checked at exit.
GUARD = """
import runpy, sys, atexit
BANNED = ("tensorflow", "keras", "kclassify", "tf_keras", "jax", "torch")
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BANNED:
            raise ImportError(f"the kit imported {name}")
sys.meta_path.insert(0, Block())
def check():
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BANNED)
    if loaded:
        print("BANNED MODULES LOADED:", loaded, file=sys.stderr); sys.stderr.flush()
atexit.register(check)
script = sys.argv[1]
sys.argv = sys.argv[1:]
sys.path.insert(0, __import__("os").path.dirname(script))
runpy.run_path(script, run_name="__main__")
"""


def kit(script, *args, cwd=None):
    return subprocess.run([sys.executable, "-c", GUARD, str(KIT / script), *map(str, args)],
                          capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.fixture(scope="module")
def int8_export(digits_run, tmp_path_factory):
    from kclassify.commands.export import ExportJob

    out = tmp_path_factory.mktemp("kit") / "model_int8.tflite"
    job = ExportJob(digits_run)
    return job.export("int8", out), job


@pytest.fixture(scope="module")
def val_folder(int8_export, tmp_path_factory):
    """The run's validation split written as PNGs in class folders (lossless, so the kit sees
    exactly the pixels kclassify evaluated)."""
    from PIL import Image

    _, job = int8_export
    root = tmp_path_factory.mktemp("valimages")
    for i, (image, label) in enumerate(zip(job.val.images, job.val.labels)):
        folder = root / job.names[label]
        folder.mkdir(exist_ok=True)
        Image.fromarray(image[..., 0]).save(folder / f"{i:04d}.png")
    return root


def test_evaluate_matches_kclassify_and_imports_no_tensorflow(int8_export, val_folder, tmp_path):
    rep, _ = int8_export
    out = kit("evaluate.py", rep["file"], "--images", val_folder, "--json", tmp_path / "e.json")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "BANNED" not in out.stderr and "confusion matrix" in out.stdout and "precision" in out.stdout
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["count"] == rep["tflite"]["count"]
    assert report["top1"] == pytest.approx(rep["tflite"]["top1"], abs=1e-9)
    assert np.asarray(report["confusion"]).sum() == report["count"]


def test_kit_reads_the_embedded_spec_when_the_json_is_gone(int8_export, tmp_path):
    rep, _ = int8_export
    alone = tmp_path / "alone.tflite"
    alone.write_bytes(open(rep["file"], "rb").read())
    out = kit("predict.py", alone, ROOT / "tests" / "data" / "digit3.png", "-k", "3")
    assert out.returncode == 0, out.stderr[-2000:]
    line = out.stdout.strip()
    assert line.startswith(str(ROOT / "tests" / "data" / "digit3.png")) and line.count(",") == 2
    assert line.split(": ")[1].split()[0] == "3"  # the digit drawn in the file


def test_benchmark_reports_latency_and_delegate(int8_export, tmp_path):
    rep, _ = int8_export
    out = kit("benchmark.py", rep["file"], "--threads", "1,2", "--runs", "20", "--json", tmp_path / "b.json")
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads((tmp_path / "b.json").read_text())
    assert [t["threads"] for t in data["latency"]] == [1, 2]
    assert all(0 < t["median_ms"] <= t["p90_ms"] for t in data["latency"])
    assert data["delegate"]["ops"] >= data["delegate"]["delegated"] > 0 and "XNNPACK took" in out.stdout


def test_kit_bad_input_exits_2_with_one_line(int8_export, val_folder, tmp_path):
    rep, _ = int8_export
    missing = kit("evaluate.py", tmp_path / "nope.tflite", "--images", val_folder)
    assert missing.returncode == 2 and "model not found" in missing.stderr and "Traceback" not in missing.stderr
    (tmp_path / "imgs" / "zebra").mkdir(parents=True)
    unknown = kit("evaluate.py", rep["file"], "--images", tmp_path / "imgs")
    assert unknown.returncode == 2 and "zebra" in unknown.stderr and "Traceback" not in unknown.stderr
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    pred = kit("predict.py", rep["file"], bad)
    assert pred.returncode == 2 and str(bad) in pred.stderr and "Traceback" not in pred.stderr


def test_corrupt_image_in_folder_is_skipped_by_path(int8_export, val_folder, tmp_path):
    import shutil

    rep, _ = int8_export
    folder = tmp_path / "v"
    shutil.copytree(val_folder, folder)
    (folder / "4" / "zz_broken.png").write_bytes(b"garbage")
    out = kit("evaluate.py", rep["file"], "--images", folder)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "zz_broken.png" in out.stderr and "skipped" in out.stderr


def test_kclassify_uses_the_kit_code():
    """One copy of the runner and metrics: kclassify's are the kit's."""
    from kclassify import metrics
    from kclassify.kit import kitlib

    assert metrics.classification_report is kitlib.classification_report
    assert kitlib.__file__ == str(KIT / "kitlib.py")


def test_cli_kit_copy_is_self_contained(int8_export, tmp_path):
    from kclassify.commands.export import copy_kit
    from kclassify.kit import KIT_FILES

    dest = copy_kit(tmp_path / "device")
    assert sorted(p.name for p in dest.iterdir()) == sorted(KIT_FILES)
