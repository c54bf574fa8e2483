"""fit: run folder contents, schedules, resume after kill -9, NaN handling, mirrored strategy,
loading in a fresh process."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, run_cli, tiny_recipe
from kclassify.errors import RecipeError, TrainingDiverged


def test_run_folder_holds_everything(digits_run):
    for name in ["model.keras", "recipe.yaml", "metrics.json", "history.csv", "curves.png",
                 "val_confusion.png", "val_confusion.json", "val_report.json", "labels.json"]:
        assert (digits_run / name).exists(), name
    metrics = json.loads((digits_run / "metrics.json").read_text())
    assert set(metrics["val"]) >= {"top1", "top5", "loss"} and metrics["epochs"] == 8
    assert metrics["train_seconds"] > 0
    assert metrics["val"]["top1"] >= 0.9  # real digits, 8 epochs: a working trainer is far above


def test_history_has_one_row_per_epoch_and_lr(digits_run):
    import csv

    with open(digits_run / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == list(range(8))
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[-1] < lrs[1]  # cosine decays


def test_schedule_warmup_cosine_and_step():
    from kclassify.train.schedules import WarmupSchedule

    cos = WarmupSchedule(0.1, total_steps=100, warmup_steps=10, kind="cosine")
    lr = [float(cos(s)) for s in range(100)]
    assert lr[0] == pytest.approx(0.01) and lr[9] == pytest.approx(0.1) and lr[10] == pytest.approx(0.1)
    assert lr[55] == pytest.approx(0.05, abs=1e-3) and lr[99] < 1e-3
    step = WarmupSchedule(0.1, total_steps=100, kind="step", milestones=[30, 60], gamma=0.1)
    assert [float(step(s)) for s in (29, 30, 59, 60)] == pytest.approx([0.1, 0.01, 0.01, 0.001])


def test_weight_decay_skips_bias_and_bn():
    from kclassify.models import build_model
    from kclassify.recipe import TrainConfig
    from kclassify.train.optim import make_optimizer

    model = build_model("resnet20", 10, (8, 8, 3))
    opt = make_optimizer(TrainConfig(weight_decay=5e-4, momentum=0.9), 10, model)
    decayed = {v.path for v in model.trainable_variables if opt._use_weight_decay(v)}
    assert decayed and all(p.endswith("kernel") for p in decayed)
    assert len(decayed) == sum(1 for v in model.trainable_variables if len(v.shape) > 1)
    assert opt.weight_decay == pytest.approx(5e-3)  # 5e-4 coupled == 5e-3 decoupled at momentum 0.9


# slow tier (keeps the fast one under 15 minutes on 2 cores); the mid-epoch SIGKILL resume (test_engine) stays fast
@pytest.mark.slow
def test_resume_after_kill_continues_from_last_epoch(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: {source: digits, val_fraction: 0.2}\nmodel: {name: resnet20}\n"
                      "train: {epochs: 4, batch_size: 32, lr: 0.05}\nruntime: {verbose: 2}\n"
                      "output: {tensorboard: false, plots: false}\n")
    out = tmp_path / "run"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "kclassify", "fit", str(recipe), "--out", str(out)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = out / "ckpt" / "state.json"
    deadline = time.time() + 300
    while time.time() < deadline and not (state.exists() and json.loads(state.read_text())["epoch"] >= 1):
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = json.loads(state.read_text())
    done = saved["epoch"]
    assert 1 <= done < 4 and not (out / "model.keras").exists()
    res = run_cli("fit", recipe, "--out", out)
    assert res.returncode == 0, res.stderr[-2000:]
    steps = 1437 // 32
    assert f"resuming {out} at step {done * steps} (epoch {done}, phase 1; optimizer step {done * steps}," in res.stdout
    hist = json.loads(state.read_text())["history"]
    assert [h["epoch"] for h in hist] == [0, 1, 2, 3]  # each epoch once
    assert hist[:done] == saved["history"]
    assert hist[done]["lr"] < saved["history"][-1]["lr"]  # cosine kept going down, not restarted
    again = run_cli("fit", recipe, "--out", out)
    assert again.returncode == 0 and "already trained for 4 epochs" in again.stdout


def test_resumed_learning_rate_equals_uninterrupted():
    """The schedule is a function of the restored step counter: same lr as without a stop."""
    from kclassify.recipe import TrainConfig
    from kclassify.train.schedules import schedule_from

    sched = schedule_from(TrainConfig(epochs=10, warmup_epochs=1, lr=0.1), steps_per_epoch=45)
    rebuilt = schedule_from(TrainConfig(epochs=10, warmup_epochs=1, lr=0.1), steps_per_epoch=45)
    for step in (0, 44, 45, 200, 449):
        assert float(sched(step)) == float(rebuilt(step))


def test_resume_refuses_a_changed_recipe(tmp_path):
    from kclassify.commands.fit import fit

    fit(tiny_recipe(tmp_path, train={"epochs": 1}), echo=lambda *a: None)
    (tmp_path / "run" / "model.keras").unlink()
    with pytest.raises(RecipeError, match="(?s)train.lr: 0.05 -> 0.3.*--fresh"):
        fit(tiny_recipe(tmp_path, train={"epochs": 1, "lr": 0.3}), echo=lambda *a: None)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    import keras

    from kclassify.run import Run
    from kclassify.commands.fit import fit

    class PoisonInThirdEpoch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.optimizer.iterations.numpy()) == 50:  # 22 steps an epoch
                w = self.model.trainable_weights[0]
                w.assign(np.full(w.shape, np.nan, np.float32))

    recipe = tiny_recipe(tmp_path, train={"epochs": 3})
    with pytest.raises(TrainingDiverged, match="last good checkpoint \\(step-00000044.keras, epoch 2\\) is kept"):
        fit(recipe, callbacks=[PoisonInThirdEpoch()], echo=lambda *a: None)
    after = Run.load(tmp_path / "run").read_state()
    assert after["epoch"] == 2 and (tmp_path / "run" / "ckpt" / after["file"]).exists()
    assert not (tmp_path / "run" / "model.keras").exists()


def test_nan_loss_cli_exit_code(tmp_path):
    res = run_cli("fit", "quickstart", "--out", tmp_path / "r", "--set", "train.lr=1e30",
                  "--set", "train.epochs=2", "--set", "train.warmup_epochs=0", "--set", "output.export=[]")
    assert res.returncode == 3, res.stderr[-2000:]
    assert "loss became" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow  # 15-30 s of the fast tier (two workers on 2 cores)
def test_mirrored_strategy_on_two_logical_cpus(tmp_path):
    res = run_cli("fit", "quickstart", "--out", tmp_path / "m", "--set", "runtime.strategy=mirrored",
                  "--set", "runtime.cpu_devices=2", "--set", "train.epochs=1", "--set", "output.export=[]",
                  "--set", "model.params.width_mult=0.5")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "replicas: 2" in res.stdout
    assert json.loads((tmp_path / "m" / "metrics.json").read_text())["epochs"] == 1


def test_model_loads_in_fresh_process_with_equal_outputs(digits_run, tmp_path):
    import keras

    from kclassify.data import load_data
    from kclassify.recipe import load_recipe

    recipe = load_recipe(digits_run / "recipe.yaml")
    x = load_data(recipe.data).val.images[:16].astype("float32")
    np.save(tmp_path / "x.npy", x)
    expected = keras.models.load_model(digits_run / "model.keras").predict(x, verbose=0)
    code = ("import numpy as np, kclassify, keras; m = keras.models.load_model(r'%s'); "
            "np.save(r'%s', m.predict(np.load(r'%s'), verbose=0))"
            % (digits_run / "model.keras", tmp_path / "y.npy", tmp_path / "x.npy"))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True)
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), expected)


def test_checkpoint_loads_after_import_kclassify_only(digits_run):
    """Checkpoints carry the optimizer and its kclassify schedule: `import kclassify` suffices,
    even when TensorFlow is imported before Keras."""
    ckpt = next((digits_run / "ckpt").glob("step-*.keras"))
    code = ("import kclassify, tensorflow, keras; m = keras.models.load_model(r'%s'); "
            "print(type(m.optimizer._learning_rate).__name__)" % ckpt)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "WarmupSchedule", out.stderr[-1000:]


@pytest.mark.slow  # 22 s of the fast tier; the tfds source keeps its fast tests in test_data.py
def test_cifar100_recipe_runs_on_mocked_tfds(tmp_path):
    """The GPU recipe, unchanged but for size knobs, runs two steps on tfds mock data."""
    import tensorflow_datasets as tfds

    from kclassify.recipe import load_recipe
    from kclassify.commands.fit import fit

    recipe = load_recipe("cifar100", ["train.epochs=1", "train.steps_per_epoch=2", "train.batch_size=4",
                                      "train.step_milestones=[]", "runtime.precision=float32",
                                      "output.export=[]", "output.tensorboard=false",
                                      f"output.dir={tmp_path}/c100", f"data.data_dir={tmp_path}/tfds",
                                      "runtime.verbose=0"])
    with tfds.testing.mock_data(num_examples=16):
        run = fit(recipe, echo=lambda *a: None)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["model"] == "wrn28_10" and metrics["epochs"] == 1 and metrics["params"] > 36e6


@pytest.mark.slow  # the slow tier (-m slow): keeps the fast tier under 8 minutes on 2 cores
@pytest.mark.parametrize("first", ["kclassify.train.schedules", "kclassify.layers.dropblock"])
def test_custom_objects_register_whichever_module_imports_keras_first(first):
    code = (f"import {first}, keras; g = keras.saving.get_registered_object; "
            "print(all(g('kclassify>' + n) is not None for n in "
            "['WarmupSchedule', 'DropBlock2D', 'GroupSGD', 'DistillationLoss', 'StochasticDepth']))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "True", out.stderr[-1500:]


def test_onecycle_schedule_and_linear_scaling_rule():
    from kclassify.recipe import TrainConfig
    from kclassify.train.schedules import WarmupSchedule, schedule_from

    one = WarmupSchedule(0.4, total_steps=100, warmup_steps=20, kind="onecycle")
    assert [float(one(s)) for s in (0, 19, 20, 60, 99)] == pytest.approx([0.02, 0.4, 0.4, 0.2, 0.005])
    scaled = schedule_from(TrainConfig(lr=0.1, batch_size=512, lr_reference_batch=256, epochs=2), 10)
    assert float(scaled(5)) == pytest.approx(0.2 * 0.5 * (1 + np.cos(np.pi * 5 / 20)), rel=1e-5)


def test_import_kclassify_registers_every_keras_object_the_package_defines():
    """What `import kclassify` registers (when Keras is imported) is all that importing every
    module of the package registers: no hand-kept list can leave one out (one once left out
    the Muon optimizer)."""
    code = ("import importlib, pkgutil, kclassify, keras\n"
            "first = set(keras.saving.get_custom_objects())\n"
            "skip = ('kclassify.kit.', 'kclassify.qat.worker', 'kclassify.__main__')\n"
            "for m in pkgutil.walk_packages(kclassify.__path__, 'kclassify.'):\n"
            "    if not m.name.startswith(skip):\n"
            "        importlib.import_module(m.name)\n"
            "every = {k for k in keras.saving.get_custom_objects() if k.startswith('kclassify>')}\n"
            "print(sorted(every - first)); print(sorted(every))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    missing, every = out.stdout.strip().splitlines()[-2:]
    assert missing == "[]", out.stdout + out.stderr[-1500:]
    assert "kclassify>MuonSGD" in every and "kclassify>DropBlock2D" in every, every


def test_a_muon_checkpoint_loads_in_a_fresh_process(tmp_path):
    """`import kclassify; keras.models.load_model(checkpoint)` for a run trained with train.optimizer
    muon: the checkpoint holds the MuonSGD optimizer, which must be registered too."""
    from kclassify.commands.fit import fit

    recipe = tiny_recipe(tmp_path, train={"epochs": 1, "optimizer": "muon", "warmup_epochs": 0},
                         output={"export": [], "report": False, "plots": False})
    run = fit(recipe, echo=lambda *a: None)
    ckpt = sorted((run / "ckpt").glob("step-*.keras"))[-1]
    code = (f"import kclassify, keras\nm = keras.models.load_model({str(ckpt)!r})\n"
            "print(type(m.optimizer).__name__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip().endswith("MuonSGD"), out.stderr[-2000:]
