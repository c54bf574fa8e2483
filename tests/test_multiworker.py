"""Several workers through tf.distribute.MultiWorkerMirroredStrategy on localhost: the engine's own
step driver (kclassify.train.loop) where Keras' model.fit fails."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT

RECIPE = ("data: {source: digits, val_fraction: 0.2}\nmodel: {name: resnet20, params: {width_mult: 0.5}}\n"
          "train: {epochs: 1, batch_size: 32, lr: 0.02, warmup_epochs: 0.5}\n"
          "runtime: {verbose: 2, sync_bn: true}\n"
          "output: {tensorboard: false, plots: false, report: false, log_every_steps: 1, checkpoint_every_steps: 15}\n")


def _recipe(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE)
    return path


def _launch(*args, timeout=900):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-m", "kclassify", "launch", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _losses(run):
    rows = [r.split(",") for r in (run / "steps.csv").read_text().split()[1:]]
    return {int(step): float(loss) for step, loss, _ in rows}


# slow tier (keeps the fast one under 15 minutes on 2 cores); 45 s of two worker processes
@pytest.mark.slow
def test_two_workers_finish_one_run_folder_and_match_one_process(tmp_path):
    """(a) both workers finish and only the chief writes; (b) the loss at every step equals a
    one-process run with the same global batch (BN synchronized over replicas, no augmentation):
    equal to float32 rounding for the first steps, then within 5% as the all-reduce's different
    summation order (about 1e-7 a step) grows through training (measured: 2.3% at most over the
    epoch, 1.1e-3 by step 12), as two float orders of the same arithmetic do."""
    recipe = _recipe(tmp_path)
    res = _launch("--workers", 2, recipe, "--out", tmp_path / "multi")
    assert res.returncode == 0, res.stdout[-3000:]
    for worker in (0, 1):
        assert f"[worker {worker}] " in res.stdout
    assert "[worker 0] run folder:" in res.stdout and "replicas: 2" in res.stdout
    assert (tmp_path / "multi" / "model.keras").exists() and not list(tmp_path.glob("multi*/**/worker*"))
    single = subprocess.run([sys.executable, "-m", "kclassify", "fit", str(recipe), "--out", str(tmp_path / "one")],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-2000:]
    multi, one = _losses(tmp_path / "multi"), _losses(tmp_path / "one")
    assert sorted(multi) == sorted(one) == list(range(1, 44 + 1))
    diffs = np.array([abs(multi[s] - one[s]) / one[s] for s in sorted(one)])
    assert diffs[:3].max() < 1e-6, f"first steps differ by {diffs[:3].max():.2e}"
    assert diffs.max() < 0.05, f"largest relative loss difference {diffs.max():.2e} at step {diffs.argmax() + 1}"
    top1 = [json.loads((tmp_path / run / "metrics.json").read_text())["val"]["top1"] for run in ("multi", "one")]
    # 360 validation images after 44 steps of a drifting trajectory: measured 86.1% vs 83.3% (10 images)
    assert abs(top1[0] - top1[1]) < 0.05, top1


@pytest.mark.slow
def test_killing_a_worker_and_restarting_both_resumes_from_the_last_checkpoint(tmp_path):
    import psutil

    recipe = _recipe(tmp_path)
    out = tmp_path / "run"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    launcher = subprocess.Popen([sys.executable, "-m", "kclassify", "launch", "--workers", "2", str(recipe),
                                 "--out", str(out)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    state = out / "ckpt" / "state.json"
    deadline = time.time() + 600
    while time.time() < deadline and not (state.exists() and json.loads(state.read_text())["step"] >= 15):
        time.sleep(0.2)
    workers = [p for p in psutil.Process(launcher.pid).children() if "kclassify" in " ".join(p.cmdline())]
    second = next(p for p in workers if '"index": 1' in p.environ().get("TF_CONFIG", ""))
    second.kill()
    text, _ = launcher.communicate(timeout=120)
    assert launcher.returncode != 0 and "worker 1 exited" in text
    saved = json.loads(state.read_text())["step"]
    res = _launch("--workers", 2, recipe, "--out", out)
    assert res.returncode == 0, res.stdout[-3000:]
    for worker in (0, 1):
        assert f"[worker {worker}] resuming {out} at step {saved} " in res.stdout
    assert json.loads(state.read_text())["step"] == 44


MODEL_FIT = """
import json, os, sys
os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": ["localhost:%d", "localhost:%d"]},
                                      "task": {"type": "worker", "index": int(sys.argv[1])}})
import numpy as np, tensorflow as tf, keras
strategy = tf.distribute.MultiWorkerMirroredStrategy()
x, y = np.random.rand(64, 8, 8, 3).astype("float32"), np.random.randint(0, 3, 64)
with strategy.scope():
    m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3), keras.layers.Flatten(),
                          keras.layers.Dense(3, activation="softmax")])
    m.compile("sgd", "sparse_categorical_crossentropy")
m.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(16), epochs=1, verbose=0)
"""


@pytest.mark.xfail(strict=True, reason="Keras 3.15 model.fit under MultiWorkerMirroredStrategy fails on TF 2.21 "
                                       "(keras-team/keras#20585); strict, so the day it works is seen")
def test_plain_model_fit_under_multi_worker_strategy(tmp_path):
    from kclassify.commands.launch import free_ports

    script = tmp_path / "w.py"
    script.write_text(MODEL_FIT % tuple(free_ports(2)))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    procs = [subprocess.Popen([sys.executable, str(script), str(i)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    codes = [p.wait(timeout=300) for p in procs]
    assert codes == [0, 0]
