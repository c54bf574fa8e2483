"""Smoke tests of the kept benchmark scripts: each runs for real, as its own process, on tiny data
for a few steps, and prints JSON of the expected shape with sane numbers (never timing or tight
accuracy: the figures themselves are measured elsewhere, benchmarks/RESULTS.md)."""
import io
import json
import math
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from conftest import ROOT, tiny_recipe


def script(name, *args, env=None):
    """Run benchmarks/NAME with ARGS from the repository root; the CompletedProcess, text output."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    return subprocess.run([sys.executable, f"benchmarks/{name}", *map(str, args)], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=300)


def run_script(name, *args, env=None):
    """The stdout of a script's run, which must succeed."""
    proc = script(name, *args, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def last_object(stdout):
    """The JSON object printed last, on one line or indented over several (other output before it)."""
    text = "\n" + stdout
    return json.loads(text[text.rindex("\n{") + 1:])


def json_lines(stdout):
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def numbers(obj):
    """Every number in a JSON structure."""
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, list):
        return [n for item in obj for n in numbers(item)]
    return [obj] if isinstance(obj, (int, float)) and not isinstance(obj, bool) else []


def assert_sane(obj):
    assert all(math.isfinite(n) for n in numbers(obj)), obj


def assert_fraction(*values):
    assert all(0.0 <= v <= 1.0 for v in values), values


def write_archive(path, subdirs, classes, per_class, size=32):
    """A .tar.gz of SUBDIR/classC/I.png: RGB noise tinted by class (a little to learn)."""
    rng = np.random.default_rng(0)
    from PIL import Image

    with tarfile.open(path, "w:gz") as tar:
        for sub in subdirs:
            for c in range(classes):
                for i in range(per_class):
                    image = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
                    image[..., c % 3] += np.uint8(40 + 15 * c)
                    buf = io.BytesIO()
                    Image.fromarray(image).save(buf, format="PNG")
                    info = tarfile.TarInfo(f"{sub}/class{c}/{i}.png")
                    info.size = buf.tell()
                    buf.seek(0)
                    tar.addfile(info, buf)
    return path


@pytest.fixture(scope="module")
def cifar_like(tmp_path_factory):
    """CIFAR-10's layout in small: train/CLASS/*.png, 10 classes of 12 RGB 32x32 images."""
    return write_archive(tmp_path_factory.mktemp("cifar") / "tiny.tar.gz", ["train"], 10, 12)


@pytest.fixture(scope="module")
def clothing_like(tmp_path_factory):
    """The clothing archive's layout in small: train/ and validation/, 3 classes of 8 images each."""
    return write_archive(tmp_path_factory.mktemp("clothing") / "tiny.tar.gz", ["train", "validation"], 3, 8)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A digits ResNet-20 (width 0.5) trained one epoch: the run folder the export scripts take."""
    from kclassify.commands.fit import fit

    return fit(tiny_recipe(tmp_path_factory.mktemp("bench"), train={"epochs": 1}), echo=lambda *a: None)


@pytest.mark.slow  # the slow tier (-m slow): keeps the fast tier under 8 minutes on 2 cores (50 s)
def test_cifar10_baseline(cifar_like):
    out = last_object(run_script("cifar10_baseline.py", "--data", cifar_like, "--val-count", 20, "--batch", 25,
                                 "--budget-minutes", 0.01))
    assert out["epochs"] == 1 and out["data"] == "tiny.tar.gz, 100 train / 20 val"
    assert_fraction(out["val_top1"])
    assert out["seconds_per_step"] > 0 and out["wall_seconds"] > 0


def test_train_speed():
    out = last_object(run_script("train_speed.py", "--data", "random", "--batch", 16, "--steps", 2, "--rounds", 1))
    assert out["data"] == "random uint8" and out["model"] == "airbench94"
    assert_sane(out)
    for key in ("kclassify_img_per_s", "keras_img_per_s", "ratio", "ratio_same_ops", "kclassify_aug_img_per_s",
                "kclassify_native_conv_grad_img_per_s", "conv_grad_speedup", "macs_per_image", "train_gflops"):
        assert out[key] > 0, key
    assert all(len(rounds) == 1 for rounds in out["rounds"].values())
    assert set(out["matmul_peak_gflops"]) == {"float32", "bfloat16"}


def test_export(run_dir):
    (out,) = json_lines(run_script("export.py", run_dir, "--runs-per-timing", 3, "--rounds", 1))
    assert_sane(out)
    assert out["eval_images"] > 0 and {"float32", "int8"} <= set(out["modes"])
    for mode in out["modes"].values():
        assert_fraction(mode["top1"], mode["agreement"])
        assert mode["size_ratio"] > 0 and mode["ms_1t"] > 0 and mode["ms_2t"] > 0
    assert out["int8_size_ratio"] < 1
    assert (run_dir / "compare" / "compare.json").is_file()


@pytest.mark.slow  # the slow tier (-m slow): keeps the fast tier under 8 minutes on 2 cores (QAT child: ~140 s)
def test_int8_table(run_dir):
    (out,) = json_lines(run_script("int8_table.py", run_dir, "--qat-steps", 3))
    assert_sane(out)
    budget_row = ["int8 --max-drop 0.5"] if out["budget"]["met"] else []  # refused: no file, no row
    assert [r["file"] for r in out["rows"]] == ["float32", "int8, no bias correction", "int8 (default: bias-corrected)",
                                                *budget_row, "QAT int8"]
    for row in out["rows"]:
        assert_fraction(row["top1"], row["keras_top1"], row["agreement"])
        assert row["size_bytes"] > 0 and row["ms_1t"] > 0 and row["ms_2t"] > 0
    assert out["budget"]["search_images"] > 0 and out["budget_attempts"]
    assert out["qat"]["steps"] == 3 and out["qat"]["default_keep_ships"] in ("QAT int8", "post-training int8")
    assert out["qat"]["translation_max_abs_diff"] < 1e-4
    assert (run_dir / "model_qat_int8.tflite").is_file()


def test_int8_budget_calibration_sweep(run_dir):
    head, *rows = json_lines(run_script("int8_budget.py", run_dir, "--calibration", "10,20", "--seeds", 1))
    assert_fraction(head["float_val"])
    assert head["val_images"] > 0
    assert [(r["count"], r["seed"]) for r in rows] == [(10, 0), (20, 0)]
    for row in rows:  # a drop needs a flip
        assert -100 <= row["drop_val_points"] <= row["flip_val_points"] <= 100


def test_data_stream(cifar_like, tmp_path):
    out = last_object(run_script("data_stream.py", "--data", cifar_like, "--out", tmp_path, "--epochs", 1, "--steps", 2,
                                 "--rounds", 1, "--subset", 4, "--val-count", 20,
                                 "--only", "32 in memory", "32 streamed"))
    assert out["mode"] == "fit"
    results = out["results"]
    assert set(results) == {"32 in memory", "32 streamed", "streamed / in memory images/s at 32"}
    assert_sane(results)
    for name in ("32 in memory", "32 streamed"):
        assert "error" not in results[name], results[name]
        assert results[name]["epochs"] == 1 and results[name]["images_per_s"] > 0 and results[name]["peak_rss_mb"] > 0
        assert_fraction(results[name]["val_top1"])


@pytest.mark.slow  # the slow tier (-m slow): keeps the fast tier under 8 minutes on 2 cores
def test_data_stream_flat(cifar_like, tmp_path):
    out = last_object(run_script("data_stream.py", "--data", cifar_like, "--out", tmp_path, "--flat", "--flat-size", 32,
                                 "--flat-small", 4, "--val-count", 10))
    results = out["results"]
    assert out["mode"] == "flat" and set(results) == {"small folder", "whole folder", "whole folder, 5x validation",
                                                      "peak RSS whole / small folder", "images whole / small folder"}
    for name in ("small folder", "whole folder", "whole folder, 5x validation"):
        assert "error" not in results[name], results[name]
        assert results[name]["peak_rss_mb"] > 0
    assert results["small folder"]["train_images"] < results["whole folder"]["train_images"]
    assert results["peak RSS whole / small folder"] > 0


def test_cifar10_fast_ablation(cifar_like, tmp_path):
    out = last_object(run_script("cifar10_fast_ablation.py", "--epochs", 1, "--only", "full recipe", "--out", tmp_path,
                                 "--set", f"data.path={cifar_like}", "--set", "data.val_count=20",
                                 "--set", "train.batch_size=32"))
    row = out["results"]["full recipe"]
    assert "error" not in row, row
    assert_fraction(row["val_top1"], row["val_top1_tta"])
    assert 0 < row["epochs"] <= 1 and row["wall_seconds"] > 0


def test_finetune_clothing(clothing_like, tmp_path):
    out = last_object(run_script("finetune_clothing.py", "--epochs", 3, "--out", tmp_path,
                                 "--only", "staged (pretrained)", "--set", f"data.path={clothing_like}",
                                 "--set", f"data.val_path={clothing_like}", "--set", "data.image_size=32",
                                 "--set", "model.params.weights=null"))
    row = out["results"]["staged (pretrained)"]
    assert "error" not in row, row
    assert_fraction(row["val_top1"], row["int8"]["top1"], row["int8"]["keras_top1"], row["int8"]["agreement"])
    assert row["int8"]["size_bytes"] > 0


def test_report_screenshots(run_dir, tmp_path):
    import browser

    why = browser.missing()
    if why:  # its imports still load, and it says why it cannot run
        proc = script("report_screenshots.py", run_dir, "--name", "tiny", "--out", tmp_path)
        assert proc.returncode == 1 and f"cannot take screenshots: {why}" in proc.stderr, proc.stderr[-3000:]
        pytest.skip(f"report_screenshots.py drives a headless Chromium: {why}")
    out = last_object(run_script("report_screenshots.py", run_dir, "--name", "tiny", "--out", tmp_path))
    assert out["sections"] and out["all_visible"] and not out["page_errors"] and not out["broken_images"]
    assert set(out["screenshots"]) <= set(out["sections"])
    for shot in out["screenshots"].values():
        assert shot["bytes"] > 0 and (tmp_path / os.path.basename(shot["file"])).is_file()


def test_plot_budget(tmp_path):
    png = tmp_path / "budget.png"
    out = last_object(run_script("plot_budget.py", "--out", png))
    assert out["runs"] > 0 and out["series"] and png.stat().st_size > 0
    assert_sane(out)
    for series in out["series"]:
        for point in series["points"]:
            for key in ("val_top1", "val_top1_tta"):
                if key in point:
                    assert 0 <= point[key]["min"] <= point[key]["mean"] <= point[key]["max"] <= 100


@pytest.mark.slow  # the slow tier (-m slow): keeps the fast tier under 8 minutes on 2 cores (50 s)
def test_recipe_speed():
    """Two runs of the quickstart recipe through `kclassify fit` (1 and 2 epochs), the training
    stream timed alone, and the time-to-accuracy summary, on TensorFlow."""
    lines = json_lines(run_script("recipe_speed.py", "quickstart", "--epochs", 1, 2, "--stream-batches", 2,
                                  "--set", "output.export=[]", "--set", "output.report=false",
                                  "--set", "output.plots=false", env={"KERAS_BACKEND": "tensorflow"}))
    assert_sane(lines)
    runs = [line["run"] for line in lines if "run" in line]
    assert [r["steps"] for r in runs] == [22, 44] and all(r["train_images_per_s"] > 0 for r in runs)
    assert_fraction(*[r[k] for r in runs for k in ("val_top1", "val_top1_tta")])
    stream = next(line["input"] for line in lines if "input" in line)
    assert stream["stream"] == "tf.data" and stream["batch"] == 64 and stream["input_to_train"] > 0
    summary = lines[-1]["summary"]
    assert [row["epochs"] for row in summary["lengths"]] == [1, 2] and set(summary["train_seconds_to_tta_top1"]) == {
        "0.90", "0.91", "0.92", "0.93", "0.94"}
