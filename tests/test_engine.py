"""The training engine and the run folder: one loop for fit and finetune, the lock, corrupt
checkpoints, mid-epoch resume, recovery from a divergence, the time budget, the Python API."""
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from conftest import FakeClock, ROOT, run_cli, run_cli_without, tiny_recipe

QUIET = {"echo": lambda *a: None}


def test_fit_on_tensorflow_needs_no_jax(tmp_path):
    """JAX is not a dependency: on TensorFlow the engine imports none of its JAX pieces (the fork in
    train/backends.py), so the command trains where JAX cannot be imported."""
    proc, asked = run_cli_without(("jax", "jaxlib"), "fit", "quickstart", "--out", tmp_path / "run",
                                  "--set", "train.epochs=1", "--set", "output.export=[]", "--set", "output.report=false",
                                  "--set", "output.plots=false", env={"KERAS_BACKEND": "tensorflow"})
    assert proc.returncode == 0 and asked == [], proc.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"] == 22


def test_python_api_fit_evaluate_export_build(tmp_path):
    """The README's example, run."""
    import kclassify

    run = kclassify.fit("quickstart", out=tmp_path / "q", train={"epochs": 2}, output={"export": []}, **QUIET)
    assert run.metrics["epochs"] == 2 and 0 < run.metrics["val"]["top1"] <= 1
    report = kclassify.evaluate(run.dir, **QUIET)
    assert report["tta"] == "none" and report["top1"] == pytest.approx(run.metrics["val"]["top1"], abs=1e-6)
    lines = []
    report = kclassify.evaluate(run.dir, tta="flip", echo=lines.append)
    assert report["tta"] == "flip" and report["views"] == 2
    assert any(line.startswith("warning: TTA 'flip' averages mirrored views") for line in lines)  # digits, no flip
    rep = kclassify.export(run.dir, "float32", **QUIET)
    assert rep["tflite"]["top1"] == pytest.approx(run.metrics["val"]["top1"], abs=0.01)
    model = kclassify.build_model("airbench94", num_classes=10, input_shape=(32, 32, 3))
    assert model.output_shape == (None, 10)


def test_import_kclassify_stays_free_of_tensorflow():
    code = "import sys, kclassify; kclassify.fit; print('tensorflow' in sys.modules or 'keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr[-800:]


@pytest.mark.slow  # the slow tier (-m slow): keeps the fast tier under 8 minutes on 2 cores
def test_same_ema_recipe_through_fit_and_finetune_reports_the_averaged_weights(tmp_path):
    """EMA works in both commands: the saved model holds the shadow weights, not the last ones."""
    from kclassify.commands.finetune import finetune
    from kclassify.commands.fit import fit

    seen = {}

    class LastWeights(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            seen[len(seen)] = [w.numpy().copy() for w in self.model.weights]

    avg = {"average": {"kind": "ema", "momentum": 0.9}, "epochs": 2}
    run = fit(tiny_recipe(tmp_path / "fit", train=avg), callbacks=[LastWeights()], **QUIET)
    fitted = keras.models.load_model(run / "model.keras")
    assert any(not np.allclose(a, b) for a, b in zip(fitted.get_weights(), seen[0]))

    backbone = tmp_path / "backbone"
    fit(tiny_recipe(backbone, train={"epochs": 1}), **QUIET)
    recipe = tiny_recipe(tmp_path / "ft", model={"name": "keras_kclassify",
                                                 "params": {"weights": str(backbone / "run" / "model.keras")}},
                         train={"average": {"kind": "ema", "momentum": 0.9}, "warmup_epochs": 0},
                         finetune={"phases": [{"unfreeze": "head", "epochs": 1}, {"unfreeze": "all", "epochs": 1}]})
    ft = finetune(recipe, callbacks=[LastWeights()], **QUIET)
    tuned = keras.models.load_model(ft / "model.keras")
    assert any(not np.allclose(a, b) for a, b in zip(tuned.get_weights(), seen[1]))
    history = json.loads((ft / "ckpt" / "state.json").read_text())["history"]
    assert [h["unfreeze"] for h in history] == ["head", "all"]


@pytest.mark.parametrize("command, field, message", [
    ("fit", "finetune.phases=[{unfreeze: head, epochs: 1}]", "finetune.phases is read by `kclassify finetune`"),
    ("finetune", "train.budget_minutes=5", "train.budget_minutes is not supported by kclassify finetune"),
    ("finetune", "train.warmup_epochs=1", "train.warmup_epochs is not honoured by kclassify finetune"),
    ("fit", "train.step_milestones=[2]", "train.step_milestones are epochs of a fixed schedule"),
])
def test_a_field_the_command_cannot_honour_is_an_error(tmp_path, command, field, message):
    args = ["--set", field] + (["--set", "train.budget_minutes=1"] if "milestones" in field else [])
    recipe = "clothing_mobilenet" if command == "finetune" else "quickstart"
    res = run_cli(command, recipe, "--out", tmp_path / "r", *args)
    assert res.returncode == 2 and message in res.stderr, res.stderr[-1500:]
    assert "Traceback" not in res.stderr and not (tmp_path / "r").exists()  # refused before the run folder


def _slow_cli(tmp_path, *extra):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: {source: digits, val_fraction: 0.2}\nmodel: {name: resnet20, params: {width_mult: 0.5}}\n"
                      "train: {epochs: 3, batch_size: 16, lr: 0.05}\nruntime: {verbose: 2}\n"
                      "output: {tensorboard: false, plots: false, report: false, checkpoint_every_steps: 10, "
                      "log_every_steps: 1}\n")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.Popen([sys.executable, "-m", "kclassify", "fit", str(recipe), "--out", str(tmp_path / "run"),
                             *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline and not predicate():
        time.sleep(0.1)
    return predicate()


@pytest.mark.slow  # the slow tier (-m slow): keeps the fast tier under 8 minutes on 2 cores
def test_augmentation_inside_the_step_trains_exactly_as_the_host_stream(tmp_path):
    """runtime.augment_on device (what a GPU gets by default) moves flip, smoothing and class weights
    into the compiled step; with no random draws the two runs are the same run, step for step."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: {source: digits, val_fraction: 0.2}\nmodel: {name: resnet20, params: {width_mult: 0.5}}\n"
                      "augment: {flip: alternate}\n"
                      "train: {epochs: 1, batch_size: 64, lr: 0.05, label_smoothing: 0.1, class_balance: loss}\n"
                      "output: {tensorboard: false, plots: false, report: false, export: [], log_every_steps: 1}\n")
    losses = {}
    for where in ("host", "device"):
        res = run_cli("fit", recipe, "--out", tmp_path / where, "--set", f"runtime.augment_on={where}")
        assert res.returncode == 0, res.stderr[-1500:]
        assert ("augmentation: inside the train step" in res.stdout) == (where == "device")
        rows = (tmp_path / where / "steps.csv").read_text().split()[1:]
        losses[where] = np.array([float(r.split(",")[1]) for r in rows])
    assert len(losses["host"]) == 22
    np.testing.assert_allclose(losses["device"], losses["host"], rtol=1e-5)


@pytest.mark.slow  # the slow tier (-m slow): keeps the fast tier under 8 minutes on 2 cores
def test_a_second_process_is_refused_and_a_sigkilled_run_resumes_at_the_same_step_and_learning_rate(tmp_path):
    """One killed run serves both promises (each run of the CLI costs seconds of the fast tier): while
    it trains, a second process on its folder exits 2 naming it; after SIGKILL mid-epoch, the next
    run takes over the stale lock and resumes at the checkpointed step with the same learning rate."""
    proc = _slow_cli(tmp_path)
    lock = tmp_path / "run" / "run.lock"
    assert _wait_for(lambda: lock.exists() and lock.read_text())
    second = run_cli("fit", tmp_path / "r.yaml", "--out", tmp_path / "run")
    assert second.returncode == 2, second.stderr[-1500:]
    assert f"in use by process {proc.pid}" in second.stderr and "Traceback" not in second.stderr
    state = tmp_path / "run" / "ckpt" / "state.json"
    assert _wait_for(lambda: state.exists() and 0 < json.loads(state.read_text())["step"] % 89 != 0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = json.loads(state.read_text())
    step = saved["step"]
    assert step % 10 == 0 and step % 89  # a mid-epoch checkpoint (1,437 images, 89 steps an epoch)
    logged = {int(r.split(",")[0]): float(r.split(",")[2]) for r in (tmp_path / "run" / "steps.csv").read_text().split()[1:]}
    res = run_cli("fit", tmp_path / "r.yaml", "--out", tmp_path / "run")
    assert res.returncode == 0, res.stderr[-1500:]
    assert f"taking over the lock of process {proc.pid}" in res.stdout
    assert f"resuming {tmp_path / 'run'} at step {step} " in res.stdout
    rows = (tmp_path / "run" / "steps.csv").read_text().split()[1:]
    after = [r for r in rows if int(r.split(",")[0]) == step + 1]
    assert after and float(after[-1].split(",")[2]) == pytest.approx(logged.get(step + 1, float(after[-1].split(",")[2])))
    from kclassify.recipe import TrainConfig
    from kclassify.train.schedules import schedule_from

    expected = schedule_from(TrainConfig(epochs=3, batch_size=16, lr=0.05), 89)
    assert float(after[-1].split(",")[2]) == pytest.approx(float(expected(step)), rel=1e-5)
    assert json.loads(state.read_text())["step"] == 3 * 89


def test_data_order_is_a_function_of_the_step():
    """A stream started at step s yields exactly the batches an uninterrupted one yields from s."""
    from kclassify.data.pipeline import BatchPlan, training_stream
    from kclassify.data.sources import Split

    split = Split(np.arange(200, dtype=np.uint8).reshape(200, 1, 1, 1), np.arange(200, dtype=np.int32) % 3)
    plan = BatchPlan(split.labels, 32, 6, seed=3)
    full = [x.numpy().ravel() for x, _ in training_stream(split, 3, plan).take(14)]
    resumed = [x.numpy().ravel() for x, _ in training_stream(split, 3, plan, start_step=9).take(5)]
    np.testing.assert_array_equal(np.stack(full[9:]), np.stack(resumed))
    epoch = np.concatenate(full[:6])
    assert len(set(epoch.tolist())) == 192  # no image twice in an epoch
    assert not np.array_equal(np.concatenate(full[6:12]), epoch)  # reshuffled the next epoch
    halves = [training_stream(split, 3, BatchPlan(split.labels, 32, 6, seed=3, worker=(w, 2))) for w in (0, 1)]
    first = np.concatenate([next(iter(h))[0].numpy().ravel() for h in halves])
    np.testing.assert_array_equal(first, full[0])  # two workers split the same global batch


@pytest.mark.slow  # the slow tier (-m slow): keeps the fast tier under 8 minutes on 2 cores
def test_truncated_newest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    from kclassify.commands.fit import fit

    recipe = tiny_recipe(tmp_path, train={"epochs": 3}, output={"keep_checkpoints": 2})
    fit(recipe, **QUIET)
    run = tmp_path / "run"
    state = json.loads((run / "ckpt" / "state.json").read_text())
    newest = run / "ckpt" / state["checkpoints"][-1]["file"]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a kill during the write
    state["done"] = False
    (run / "ckpt" / "state.json").write_text(json.dumps(state))
    (run / "model.keras").unlink()
    out = []
    fit(recipe, echo=out.append)
    text = "\n".join(map(str, out))
    assert "is truncated" in text and "falling back" in text and "resuming from the older checkpoint" in text
    after = json.loads((run / "ckpt" / "state.json").read_text())
    assert after["epoch"] == 3 and [h["epoch"] for h in after["history"]] == [0, 1, 2]
    assert (run / "model.keras").exists()


def test_nan_at_a_step_recovers_with_a_halved_learning_rate(tmp_path):
    """A weight poisoned once mid-run: the engine restores the last checkpoint, halves the rate
    and finishes; the recovery is recorded."""
    from kclassify.commands.fit import fit

    class PoisonOnce(keras.callbacks.Callback):
        done = False

        def on_train_batch_end(self, batch, logs=None):
            if not PoisonOnce.done and int(self.model.optimizer.iterations.numpy()) == 30:
                PoisonOnce.done = True
                w = self.model.trainable_weights[0]
                w.assign(np.full(w.shape, np.nan, np.float32))

    recipe = tiny_recipe(tmp_path, train={"epochs": 2, "recovery_trials": 2}, output={"log_every_steps": 1})
    run = fit(recipe, callbacks=[PoisonOnce()], **QUIET)
    state = json.loads((run / "ckpt" / "state.json").read_text())
    assert len(state["recoveries"]) == 1 and state["lr_scale"] == 0.5
    assert state["recoveries"][0]["back_to_step"] == 22 and state["epoch"] == 2
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["recoveries"] == state["recoveries"] and np.isfinite(metrics["val"]["loss"])


def test_budget_planner_stops_inside_the_budget_on_a_slowed_run(tmp_path):
    """On a fake clock, each step takes 0.4 s, then 1 s after step 30: the run plans again each
    epoch and still ends inside its budget, command included (every part read from one clock, which
    also moves 10 ms at each reading, so the final steps take time too)."""
    from kclassify.commands.fit import fit

    clock = FakeClock(tick=0.01)

    class SlowDown(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            clock.advance(1.0 if int(self.model.optimizer.iterations.numpy()) > 30 else 0.4)

    budget = 0.75  # minutes
    recipe = tiny_recipe(tmp_path, train={"epochs": 200, "budget_minutes": budget, "warmup_epochs": 0,
                                          "warmup_fraction": 0.1, "batch_size": 32},
                         evaluate={"tta": "mirror_translate"})
    t = clock()
    run = fit(recipe, callbacks=[SlowDown()], started=t, clock=clock, **QUIET)
    wall = clock() - t
    metrics = json.loads((run / "metrics.json").read_text())
    b = metrics["budget"]
    history = json.loads((run / "ckpt" / "state.json").read_text())["history"]
    seen = {"wall": round(wall, 1), **b, "epoch_seconds": [h["seconds"] for h in history]}
    assert wall < 60 * budget and b["actual_wall_seconds"] < 60 * budget, seen
    assert 0 < b["final_seconds"] <= b["reserved_final_seconds"] + b["margin_seconds"], b
    assert set(b["final_parts"]) == {"save", "evaluate", "write", "exports", "report"}, b
    assert sum(b["final_parts"].values()) <= b["final_seconds"] + 0.1 and b["training_ended_seconds"] < 60 * budget
    assert b["inference_ms_per_image"] > 0 and b["tta_ms_per_image"] > 0, b  # timed on the final network
    assert b["replans"] >= 2 and b["planned_steps"] == metrics["steps"] < 200 * 44
    assert 0.4 <= b["seconds_per_step"] < 1.5, b  # the clock's steps (and ticks), not the machine's speed
    # the fake clock's plan: 30 steps at 0.4 s, the rest at 1 s, in the 45 s less margin and final steps
    assert 30 < metrics["steps"] < 70, seen
    lrs = [h["lr"] for h in json.loads((run / "ckpt" / "state.json").read_text())["history"]]
    assert lrs[-1] < 0.05 * lrs[0] + 1e-6  # the schedule spanned the steps actually run


def test_an_overrun_budget_says_where_its_time_went():
    """A command that ends past its budget names the overrun, when training ended and each final
    part's seconds against what was kept for them."""
    from kclassify.train.budget import Budget, close

    now = 1_000_000.0
    clock = lambda: now  # noqa: E731  (a fixed time: the command ends at `now`)
    budget = Budget(0.5, now - 40.0, val_images=100, eval_views=0, exports=[], calibration_images=0, clock=clock)
    said, metrics = [], {}
    parts = {"save": 0.2, "evaluate": 14.5, "write": 0.3, "exports": 0.0, "report": 0.4}
    close(metrics, {"plan": {"total_steps": 90}, "step": 90}, budget, now - 40.0, now - 16.0, parts, said.append, clock)
    b = metrics["budget"]
    assert b["final_parts"] == parts and b["training_ended_seconds"] == 24.0 and b["actual_wall_seconds"] == 40.0
    over = said[-1]
    assert over.startswith("budget: over by 10.") and "training ended at 24 s" in over and "evaluate 14.5 s" in over
    assert f"against {b['reserved_final_seconds']:.1f} s kept" in over

    said.clear()
    close({}, {"plan": {"total_steps": 90}, "step": 90}, budget, now - 20.0, now - 2.0, parts, said.append, clock)
    assert len(said) == 1 and "over by" not in said[0]  # inside the budget: one line, no alarm


def test_the_final_reserve_grows_when_the_machine_gets_busier():
    """Inference is timed once; when steps later run 3x slower (another job on the machine), the
    time kept for the final evaluation and exports grows with them, and shrinks back after (never
    below what was measured)."""
    from kclassify.train.budget import EXPORT_SECONDS, REPORT_SECONDS, Budget

    b = Budget(30.0, 0.0, val_images=5000, eval_views=6, exports=["int8"], calibration_images=500, clock=lambda: 0.0)
    b.seconds_per_step = 0.5
    b.inference_timed(0.002, 0.010)
    fixed = EXPORT_SECONDS + REPORT_SECONDS
    quiet = b.final_seconds() - fixed
    assert b.load() == 1.0 and abs(quiet - (1.1 * 5000 * 0.012 + 5500 * 0.002 * 1 + 5000 * 0.002)) < 1e-6
    b.seconds_per_step = 1.5
    assert b.load() == 3.0 and abs((b.final_seconds() - fixed) - 3 * quiet) < 1e-6
    assert b.record(100, 10)["load_since_inference_timed"] == 3.0
    for quieter in (0.5, 0.2):  # back to the timed speed, or faster: the measured reserve holds
        b.seconds_per_step = quieter
        assert abs((b.final_seconds() - fixed) - quiet) < 1e-6


def test_the_final_reserve_counts_tta_only_on_its_share_of_the_images():
    """evaluate.tta_fraction 0.15: the views' time is kept for 15% of the validation images."""
    from kclassify.train.budget import REPORT_SECONDS, Budget

    b = Budget(30.0, 0.0, val_images=5000, eval_views=6, exports=[], calibration_images=500, clock=lambda: 0.0)
    b.seconds_per_step = 0.5
    b.inference_timed(0.002, 0.010)
    b.tta_fraction = 0.15
    assert abs(b.final_seconds() - REPORT_SECONDS - 1.1 * 5000 * (0.002 + 0.15 * 0.010)) < 1e-6
