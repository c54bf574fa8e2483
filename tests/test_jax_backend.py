"""The engine on Keras' JAX backend (CPU here, `jax[cpu]` in the test extra): the quickstart recipe
trains through `kclassify fit` and ships its measured int8 file (exported on TensorFlow in a child
process); the same command trains where TensorFlow cannot be imported (a GPU machine with JAX
alone) and skips the export with a line; every registered model builds and trains a step;
TensorFlow-only options are refused by name. Each case runs in its own process, because a process
picks its backend once."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, run_cli_without, tiny_recipe
from kclassify.errors import RecipeError
from kclassify.runtime import check_backend

pytest.importorskip("jax", reason="the JAX backend's tests need jax[cpu] (pip install -e '.[test]')")

# Models that do not build under JAX, with why (none so far).
NOT_ON_JAX = {}


def on_jax(*args, timeout=600, env=None):
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("augment_on", ["host", pytest.param("device", marks=pytest.mark.slow)])
def test_quickstart_trains_on_jax_and_its_int8_file_is_measured_on_tensorflow(tmp_path, augment_on):
    """host: tf.data augments; device: the numpy stream feeds uint8 batches that the jitted step
    prepares itself (augment/device.py)."""
    out = tmp_path / "run"
    proc = on_jax("-m", "kclassify", "fit", "quickstart", "--out", out, "--set", "train.epochs=4",
                  "--set", f"runtime.augment_on={augment_on}")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "runtime.fused_bn: TensorFlow's fused BatchNorm kernel is set aside on jax" in proc.stdout
    assert "export int8: on TensorFlow in a child process (this run trained on jax)" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 4 * 22 and metrics["val"]["top1"] > 0.8  # 4 epochs: 0.953-0.972 over seeds 0-2 (measured)
    exported = json.loads((out / "model_int8.json").read_text())
    # The .keras saved on JAX, loaded on TensorFlow, predicts what the JAX run measured.
    assert exported["keras"]["top1"] == pytest.approx(metrics["val"]["top1"], abs=1 / 360 + 1e-9)
    assert exported["agreement"] >= 0.95 and (out / "model_int8.tflite").stat().st_size > 0
    history = (out / "history.csv").read_text().splitlines()
    assert history[0].endswith("images_per_s") and len(history) == 5


def test_data_parallel_over_two_devices_trains_as_one_device_does(tmp_path):
    """runtime.strategy mirrored on JAX: keras.distribution's DataParallel over two CPU devices
    (XLA_FLAGS) computes what one device computes, BatchNorm over the global batch included. With the
    augmentation in the step (keyed by the step) a JAX run repeats exactly, so the two runs' losses
    agree to float32 rounding; measured: the first 4 steps' to 7 digits, then rounding differences grow
    (step 7: 3.319077 and 3.320207)."""
    losses = {}
    for strategy in ("default", "mirrored"):
        run = tmp_path / strategy
        proc = on_jax("-m", "kclassify", "fit", "quickstart", "--out", run, "--set", "train.epochs=1",
                      "--set", "runtime.augment_on=device", "--set", f"runtime.strategy={strategy}",
                      "--set", "output.log_every_steps=1", "--set", "output.export=[]", "--set", "output.report=false",
                      env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        losses[strategy] = [float(line.split(",")[1]) for line in (run / "steps.csv").read_text().splitlines()[1:]]
    assert "DataParallel over 2 devices" in proc.stdout
    one, two = losses["default"], losses["mirrored"]
    assert len(one) == len(two) == 22
    assert two[:4] == pytest.approx(one[:4], rel=1e-5) and two[-1] == pytest.approx(one[-1], rel=0.05)


BUILD_ALL = """
import json, sys
import numpy as np
import keras
from kclassify.models import build_model
assert keras.backend.backend() == "jax"
train, names, out = sys.argv[1] == "train", sys.argv[2:], {}
x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
for name in names:
    try:
        model = build_model(name, 5, (32, 32, 3))
        if train:  # a compiled step: on a CPU, seconds of XLA compilation a model
            model.compile(optimizer="sgd", loss="categorical_crossentropy")
            value = float(model.train_on_batch(x, np.eye(5, dtype="float32")[[0, 1]]))
        else:
            value = float(np.asarray(model(x, training=False)).sum())  # probabilities: 2 rows of 1
        out[name] = "ok" if np.isfinite(value) else f"not finite: {value}"
    except Exception as err:
        out[name] = f"{type(err).__name__}: {str(err)[:300]}"
print(json.dumps(out))
"""


def registered(which):
    """The registry's generic models: `fast` (not marked slow), `slow`, or `families` (the first
    fast model of each family)."""
    from kclassify.models import MODELS

    names = [n for n in MODELS.names() if MODELS.info(n).get("generic_tests", True) and n not in NOT_ON_JAX]
    if which == "families":
        return list({MODELS.info(n)["family"]: n for n in reversed(registered("fast"))}.values())
    return [n for n in names if bool(MODELS.info(n).get("slow")) == (which == "slow")]


@pytest.mark.slow  # a JAX child process: 30-45 s for these on a 2-core CPU
@pytest.mark.parametrize("which,mode", [("fast", "build"), ("families", "train")])
def test_every_registered_model_builds_and_runs_on_jax(which, mode):
    """Every model of the registry's fast tier builds and runs forward on JAX, and one of each family
    trains a compiled step. The models marked slow (resnet1202, preact_resnet1001, the VGGs, ...) are
    their families' blocks at depth: on a CPU, JAX takes minutes each to run them (a compiled step of
    all of them ran past 10 minutes), so they are left to a GPU run."""
    names = registered(which)
    proc = on_jax("-c", BUILD_ALL, mode, *names, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.splitlines()[-1])
    assert {n: r for n, r in results.items() if r != "ok"} == {}
    assert sorted(results) == sorted(names)


def test_tensorflow_only_options_are_refused_by_name_on_jax(tmp_path):
    for section, fields, named in (("runtime", {"strategy": "multi_worker"}, "runtime.strategy: multi_worker"),
                                   ("runtime", {"fused_bn": True}, "runtime.fused_bn: true"),
                                   ("train", {"low_res": {"size": 6, "fraction": 0.5}}, "train.low_res")):
        recipe = tiny_recipe(tmp_path, **{section: fields})
        with pytest.raises(RecipeError, match=f"{named} runs on TensorFlow only"):
            check_backend(recipe, "jax")


def test_defaults_that_are_tensorflows_are_set_aside_with_a_line(tmp_path):
    recipe, lines = tiny_recipe(tmp_path), []
    assert recipe.runtime.fused_bn
    check_backend(recipe, "jax", lines.append, tensorflow=True)
    assert not recipe.runtime.fused_bn and recipe.runtime.augment_on == "host"  # auto: host on JAX
    assert lines == ["runtime.fused_bn: TensorFlow's fused BatchNorm kernel is set aside on jax (Keras' own ops)"]
    with pytest.raises(RecipeError, match="kclassify trains on tensorflow or jax"):
        check_backend(tiny_recipe(tmp_path), "torch")
    unchanged = tiny_recipe(tmp_path)
    check_backend(unchanged, "tensorflow")
    assert unchanged.runtime.fused_bn


TENSORFLOW = ("tensorflow", "tensorflow_datasets", "tf_keras", "tensorflow_model_optimization", "ai_edge_litert")


def without_tensorflow(*args, timeout=600):
    """The command on JAX where TensorFlow (and the TFLite runtime) cannot be imported, as on a GPU
    machine with JAX alone: (CompletedProcess, the TensorFlow imports kclassify asked for)."""
    return run_cli_without(TENSORFLOW, *args, env={"KERAS_BACKEND": "jax"}, timeout=timeout)


def test_fit_on_jax_runs_the_whole_engine_where_tensorflow_is_not_installed(tmp_path):
    """The quickstart recipe trains, validates, evaluates with TTA, averages (EMA), checkpoints
    mid-epoch, writes the run and its report, and skips the int8 export with a line saying how to
    make it later: without importing TensorFlow (augment_on auto becomes device: the numpy stream)."""
    out = tmp_path / "run"
    proc, asked = without_tensorflow("fit", "quickstart", "--out", out, "--set", "train.epochs=3",
                                     "--set", "evaluate.tta=flip", "--set", "output.checkpoint_every_steps=10",
                                     "--set", 'train.average={"kind": "ema", "momentum": 0.9}')
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert asked == [] and "Traceback" not in proc.stderr
    assert "runtime.augment_on: auto -> device on jax without TensorFlow" in proc.stdout
    assert (f"export int8: skipped: TFLite conversion needs TensorFlow, which is not installed in this Python; on a "
            f"machine with TensorFlow run `kclassify export {out} --tflite --quant int8`") in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 3 * 22 and metrics["train_images_per_s"] > 0
    # 3 epochs: 0.90-0.95 over seeds 0-2 (measured on a 2-core CPU), chance is 0.1
    assert metrics["val"]["top1"] > 0.5 and 0 <= metrics["val_tta"]["top1"] <= 1
    assert f"top-1 {metrics['val']['top1']:.4f}" in proc.stdout
    assert (out / "model.keras").stat().st_size > 0 and (out / "report.html").stat().st_size > 0
    assert not list(out.glob("*.tflite"))


@pytest.mark.parametrize("setting, named", [
    ("runtime.augment_on=host", "runtime.augment_on: host needs TensorFlow, which is not installed in this Python"),
    ('augment.ops=[{"name": "randaugment"}]', "augment.ops 'randaugment' has no device version")])
def test_what_needs_tensorflow_is_refused_by_name_where_it_is_not_installed(tmp_path, setting, named):
    proc, asked = without_tensorflow("fit", "quickstart", "--out", tmp_path / "run", "--set", setting)
    assert proc.returncode == 2 and asked == [], proc.stderr[-3000:]
    assert f"error: {named}" in proc.stderr and "Traceback" not in proc.stderr


def test_without_tensorflow_auto_becomes_device_and_tf_data_sources_are_refused(tmp_path):
    recipe, lines = tiny_recipe(tmp_path, runtime={"seed": 0, "verbose": 0}, output={"tensorboard": True}), []
    with pytest.raises(RecipeError, match="output.tensorboard: true needs TensorFlow"):
        check_backend(recipe, "jax", lines.append, tensorflow=False)
    with pytest.raises(RecipeError, match="data.source: tfrecord needs TensorFlow"):
        check_backend(tiny_recipe(tmp_path, data={"source": "tfrecord", "path": str(tmp_path)}), "jax", tensorflow=False)
    recipe = tiny_recipe(tmp_path)
    check_backend(recipe, "jax", lines.append, tensorflow=False)
    assert recipe.runtime.augment_on == "device" and lines[0].startswith("runtime.augment_on: auto -> device")


def test_the_numpy_stream_hands_the_step_the_images_of_the_tensorflow_stream(tmp_path):
    """Same images, labels and alternating-flip masks in the same order, across an epoch boundary
    and for one worker's slice, from the numpy stream (no TensorFlow) and from tf.data."""
    from kclassify.data import load_data
    from kclassify.data.numpy_stream import numpy_batches
    from kclassify.data.batching import steps_per_epoch
    from kclassify.data.pipeline import BatchPlan, raw_stream

    recipe = tiny_recipe(tmp_path)
    split = load_data(recipe.data, 0).train
    spe = steps_per_epoch(split, 64, None, 1)
    for worker in ((0, 1), (1, 2)):
        plan = BatchPlan(split.labels, 64, spe, 3, "none", worker)
        host = raw_stream(split, plan, spe - 2).take(4)
        device = numpy_batches(split, 64, spe, 3, spe - 2, worker)
        for (x, y, mask), (nx, ny, nmask, step) in zip(host, device):
            np.testing.assert_array_equal(x.numpy(), nx)
            np.testing.assert_array_equal(y.numpy(), ny)
            np.testing.assert_array_equal(mask.numpy(), nmask)


def test_the_device_preparation_computes_what_the_host_stream_does(tmp_path):
    """With no random draw (alternating flip, label smoothing), the step's own preparation
    (augment/device.py, keras.ops) turns the numpy stream's raw batches into the host stream's."""
    from kclassify.augment.device import device_preparer, step_key
    from kclassify.data import load_data
    from kclassify.data.numpy_stream import numpy_batches
    from kclassify.data.batching import steps_per_epoch
    from kclassify.data.pipeline import recipe_train_dataset

    recipe = tiny_recipe(tmp_path, augment={"flip": "alternate"}, train={"label_smoothing": 0.1})
    split = load_data(recipe.data, 0).train
    spe = steps_per_epoch(split, 64, None, 1)
    prepare = device_preparer(recipe, 10)
    host = recipe_train_dataset(recipe, split, 10, start_step=spe - 1).take(3)
    for (x, y), (nx, ny, mask, step) in zip(host, numpy_batches(split, 64, spe, 0, spe - 1)):
        px, py = prepare(nx, ny, mask, step_key(0, step))
        np.testing.assert_array_equal(np.asarray(px), x.numpy())
        np.testing.assert_allclose(np.asarray(py), y.numpy(), rtol=1e-6)


RANDOM_OPS = """
import json
import numpy as np
from kclassify.augment.device import cutout, mix_batch, step_key, translate, fold
from types import SimpleNamespace
rng = np.random.default_rng(0)
x = rng.integers(0, 120, (8, 12, 12, 3)).astype(np.uint8)
key = step_key(5, 17)
moved = np.asarray(translate(x, 2, "constant", key))
padded = np.pad(x, [[0, 0], [2, 2], [2, 2], [0, 0]])
windows = [any((padded[i, dy:dy + 12, dx:dx + 12] == moved[i]).all() for dy in range(5) for dx in range(5))
           for i in range(8)]
holes = np.asarray(cutout(x, key, n_holes=1, length=4))
changed = (holes != x).any(-1)
cfg = SimpleNamespace(mixup_alpha=0.4, cutmix_alpha=1.0, mix_switch_prob=0.5, mix_prob=1.0)
y = np.eye(4, dtype=np.float32)[rng.integers(0, 4, 8)]
mx, my = mix_batch(x.astype(np.float32), y, cfg, key)
again = np.asarray(translate(x, 2, "constant", step_key(5, 17)))
other = np.asarray(translate(x, 2, "constant", step_key(5, 18)))
print(json.dumps({"windows": windows, "hole_fill": bool((holes[changed.nonzero()] == 128).all()),
                  "holes_max": int(changed.sum((1, 2)).max()), "rows_sum_1": bool(np.allclose(np.asarray(my).sum(1), 1)),
                  "same_key_same": bool((again == moved).all()), "other_key_differs": bool((other != moved).any())}))
"""


def test_the_random_device_ops_on_jax_draw_per_step_and_keep_their_contracts():
    """On JAX: each translated image is a window of the padded image; Cutout paints at most one
    4x4 square of 128 per image; mixed targets still sum to 1; a step's key repeats its draws."""
    proc = on_jax("-c", RANDOM_OPS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    assert all(out.pop("windows")) and out.pop("holes_max") <= 16
    assert all(out.values()), out


@pytest.mark.slow  # three JAX runs in child processes, about 90 s
def test_a_sigkilled_jax_run_resumes_mid_epoch_and_ends_as_an_uninterrupted_one(tmp_path):
    """On JAX with the step's draws keyed by the step (augment_on device), a run killed with SIGKILL
    after a mid-epoch checkpoint resumes from it and ends bit for bit where an uninterrupted run ends
    (measured by hand: step 66's loss 0.2836334 both ways, top-1 0.913889)."""
    settings = ["--set", "train.epochs=3", "--set", "runtime.augment_on=device", "--set", "output.checkpoint_every_steps=5",
                "--set", "output.log_every_steps=1", "--set", "output.export=[]", "--set", "output.report=false"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert on_jax("-m", "kclassify", "fit", "quickstart", "--out", whole, *settings).returncode == 0
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "2"}
    child = subprocess.Popen([sys.executable, "-m", "kclassify", "fit", "quickstart", "--out", str(cut), *settings],
                             cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = cut / "ckpt" / "state.json"
    try:
        while child.poll() is None and not (state.exists() and 30 <= _step_of(state) < 60):
            time.sleep(0.2)
    finally:
        child.kill()
        child.wait()
    stopped = _step_of(state)
    assert 30 <= stopped < 66, stopped  # killed mid-run, after a checkpoint inside the second epoch
    resumed = on_jax("-m", "kclassify", "fit", "quickstart", "--out", cut, *settings)
    assert resumed.returncode == 0 and f"resuming {cut} at step" in resumed.stdout, resumed.stdout[-2000:]
    last = [(run / "steps.csv").read_text().splitlines()[-1] for run in (whole, cut)]
    assert last[0] == last[1] and last[0].startswith("66,")
    assert [json.loads((run / "metrics.json").read_text())["val"] for run in (whole, cut)] == \
        [json.loads((whole / "metrics.json").read_text())["val"]] * 2


def _step_of(state):
    try:
        return json.loads(state.read_text())["step"]
    except (OSError, ValueError):
        return -1
