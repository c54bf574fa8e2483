"""Staged fine-tuning: per phase exactly the intended layers train (others bit for bit
unchanged), frozen BatchNorm statistics do not move, group learning rates are the ones asked,
a run resumes inside a phase, and the result saves and loads."""
import json

import numpy as np
import pytest

from conftest import run_cli
from kclassify.errors import RecipeError
from kclassify.train.unfreeze import parse_schedule


def calibrate_bn(model, images):
    """Give a randomly initialized backbone the BatchNorm statistics of the data, as a
    pretrained one has: with the default 0/1 statistics, frozen BN leaves its ReLUs dead."""
    bns = [layer for layer in model.get_layer("backbone").layers if "BatchNormalization" in type(layer).__name__]
    for layer in bns:
        layer.momentum = 0.0
    for layer in bns:  # one pass per layer: each sees inputs normalized by the layers before it
        layer(np.zeros((1, *layer.input.shape[1:]), "float32"))
    for _ in range(len(bns)):
        model(images.astype("float32"), training=True)
    for layer in bns:
        layer.momentum = 0.99


@pytest.fixture(scope="module")
def base_file(tmp_path_factory, tiny_npz):
    """A kclassify ResNet-20 (random weights, data-calibrated BN) saved as a backbone file."""
    import keras

    from kclassify.models import build_model

    base = build_model("resnet20", 3, (32, 32, 3), width_mult=0.5)
    x = np.load(tiny_npz)["x"].astype("float32")
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0
    for _ in range(3):
        base(x, training=True)
    path = tmp_path_factory.mktemp("base") / "base.keras"
    base.save(path)
    return path


def ft_recipe(tmp_path, npz, phases, model=None):
    from kclassify.recipe import validate

    return validate({
        "name": "ft", "data": {"source": "npz", "path": str(npz), "val_fraction": 0.2},
        "model": model or {"name": "keras_mobilenet", "params": {"alpha": 0.25}},
        "train": {"batch_size": 16, "optimizer": "sgd", "lr": 0.05, "weight_decay": 0.0},
        "finetune": {"phases": phases},
        "runtime": {"verbose": 0}, "output": {"dir": str(tmp_path / "run"), "tensorboard": False, "plots": False}})


def test_parse_schedule():
    assert parse_schedule("head:3,top2:3@1e-4,all:6") == [
        {"unfreeze": "head", "epochs": 3}, {"unfreeze": "top2", "epochs": 3, "lr": 1e-4},
        {"unfreeze": "all", "epochs": 6}]
    assert parse_schedule("re:conv_pw_1[23]:2")[0]["unfreeze"] == "re:conv_pw_1[23]"
    for bad in ("head", "middle:3", "top2:x", "re:[:2", ""):
        with pytest.raises(RecipeError):
            parse_schedule(bad)


def snapshot(model):
    return {w.path + f"#{i}": np.array(w.numpy()) for i, w in enumerate(model.weights)}


@pytest.mark.parametrize("group,expect_backbone", [("head", set()), ("top1", {"conv_dw_13", "conv_pw_13"}),
                                                   ("top2", {"conv_dw_12", "conv_pw_12", "conv_dw_13", "conv_pw_13"})])
def test_only_the_phase_layers_change(tmp_path, tiny_npz, group, expect_backbone):
    from kclassify import runtime
    from kclassify.data.pipeline import train_dataset
    from kclassify.train.unfreeze import apply_phase
    from kclassify.commands.finetune import _data, block_pattern, engine_phases
    from kclassify.train.setup import build_for_run
    from kclassify.commands.checks import resolve_phases
    from kclassify.train.optim import make_loss, make_metrics, make_optimizer

    recipe = resolve_phases(ft_recipe(tmp_path, tiny_npz, [{"unfreeze": group, "epochs": 1}]))
    strategy = runtime.setup(recipe.runtime)
    data = _data(recipe)
    model = build_for_run(recipe, data, strategy, fresh_start=True)
    calibrate_bn(model, data.train.images)
    unfrozen = apply_phase(model, group, block_pattern(recipe))
    assert {layer.name for layer in unfrozen} == expect_backbone
    phase = engine_phases(recipe, block_pattern(recipe), echo=lambda *a: None)[0]
    multipliers = phase.setup(model)
    model.compile(optimizer=make_optimizer(phase.train, 4, model, multipliers), loss=make_loss(phase.train),
                  metrics=make_metrics(3))
    before = snapshot(model)
    model.fit(train_dataset(data.train, 3, 16), epochs=1, verbose=0)
    after = snapshot(model)
    changed = {k.split("#")[0] for k in before if not np.array_equal(before[k], after[k])}
    trainable = {w.path for w in model.trainable_weights}
    assert changed == trainable  # every trainable weight moved, nothing else (BN statistics included)
    assert all(p.startswith("head_") or p.split("/")[0] in expect_backbone for p in changed)
    assert not any("_bn/" in p for p in changed)  # backbone BatchNorm: frozen, statistics too


def test_train_bn_flag_lets_unfrozen_bn_learn(tmp_path, tiny_npz):
    from kclassify.train.unfreeze import apply_phase
    from kclassify.models import build_model

    model = build_model("keras_mobilenet", 3, (32, 32, 3), alpha=0.25)
    names = {layer.name for layer in apply_phase(model, "top1", r"conv_(?:dw|pw)_(\d+)", train_bn=True)}
    assert names == {"conv_dw_13", "conv_dw_13_bn", "conv_pw_13", "conv_pw_13_bn"}


def test_group_learning_rates_are_the_ones_asked():
    import keras

    from kclassify.recipe import TrainConfig
    from kclassify.train.optim import make_optimizer

    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.Dense(2, name="head_dense")(keras.layers.Dense(3, name="body")(inp)))
    train = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.0, weight_decay=0.0, schedule="constant")
    body = model.get_layer("body").kernel
    opt = make_optimizer(train, 1, model, [(body, 0.01)])
    before = {v.path: v.numpy().copy() for v in model.trainable_variables}
    opt.apply_gradients([(np.ones(v.shape, "float32"), v) for v in model.trainable_variables])
    for v in model.trainable_variables:
        step = before[v.path] - v.numpy()
        np.testing.assert_allclose(step, 0.1 * (0.01 if v is body else 1.0), rtol=1e-4)  # float32 subtraction


def test_resume_inside_a_phase_and_saved_model_loads(tmp_path, tiny_npz, base_file, monkeypatch):
    import keras

    from kclassify.commands.finetune import finetune

    recipe = ft_recipe(tmp_path, tiny_npz, [{"unfreeze": "head", "epochs": 1}, {"unfreeze": "top2", "epochs": 2}],
                       model={"name": "keras_kclassify", "params": {"weights": str(base_file)}})
    recipe.output.tensorboard = True  # the default: a phase's text tags must not reach TensorBoard's scalars

    class CrashAfterSecondEpoch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise KeyboardInterrupt  # as if killed right after epoch 2 was saved

    with pytest.raises(KeyboardInterrupt):
        finetune(recipe.model_copy(deep=True), echo=lambda *a: None, callbacks=[CrashAfterSecondEpoch()])
    lines = []
    run = finetune(recipe.model_copy(deep=True), echo=lines.append)
    steps = 72 // 16
    assert any(line.startswith(f"resuming {run} at step {2 * steps} (epoch 2, phase 2; optimizer step {steps},")
               for line in lines), lines
    history = json.loads((run / "ckpt" / "state.json").read_text())["history"]
    assert [(h["epoch"], h["phase"]) for h in history] == [(0, 1), (1, 2), (2, 2)]
    assert history[2]["lr"] < history[1]["lr"]  # phase 2's cosine continued, not restarted
    assert history[1]["unfreeze"] == "top2" and list((run / "logs").rglob("events.out.tfevents.*"))
    model = keras.models.load_model(run / "model.keras")
    x = np.load(tiny_npz)["x"][:4].astype("float32")
    assert model.predict(x, verbose=0).shape == (4, 3)


@pytest.mark.slow  # the slow tier (-m slow): keeps the fast tier under 8 minutes on 2 cores
def test_dry_run_lists_phases(tmp_path, tiny_npz):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data: {{source: npz, path: {tiny_npz}, val_fraction: 0.2}}\n"
                      "model: {name: keras_mobilenet, params: {alpha: 0.25}}\n")
    out = run_cli("finetune", recipe, "--unfreeze-schedule", "head:1,top2:1,all:1", "--dry-run")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "phase 2: unfreeze top2" in out.stdout and "conv_pw_13" in out.stdout
    assert "frozen BatchNorm layers: 27" in out.stdout
    bad = run_cli("finetune", recipe, "--unfreeze-schedule", "middle:2", "--dry-run")
    assert bad.returncode == 2 and "unknown unfreeze group 'middle'" in bad.stderr


def test_kclassify_model_as_backbone(tmp_path, tiny_npz):
    from kclassify.train.unfreeze import apply_phase
    from kclassify.models import build_model

    base = build_model("resnet20", 3, (32, 32, 3), width_mult=0.5)
    base.save(tmp_path / "base.keras")
    model = build_model("keras_kclassify", 3, (32, 32, 3), weights=str(tmp_path / "base.keras"))
    names = {layer.name for layer in apply_phase(model, "top1", r"(stage\d+_block\d+)_")}
    assert names == {"stage3_block3_1_conv", "stage3_block3_2_conv"}


@pytest.mark.parametrize("mode", ["linear_probe", "knn"])
def test_probe_modes(tmp_path, tiny_npz, base_file, mode):
    from kclassify.commands.finetune import finetune

    recipe = ft_recipe(tmp_path, tiny_npz, [], model={"name": "keras_kclassify", "params": {"weights": str(base_file)}})
    recipe.finetune.mode = mode
    run = finetune(recipe, echo=lambda *a: None)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["val"]["top1"] >= 0.8  # colour classes are linearly separable even on random features


def test_imagenet_weights_offline_fail_fast(tmp_path):
    import time

    from kclassify.data.tfds_source import online
    from kclassify.errors import ModelFileError

    if online():
        pytest.skip("a network is reachable here: the weights would download")
    from kclassify.models import build_model

    t0 = time.time()
    with pytest.raises(ModelFileError, match="model.params.weights"):
        build_model("keras_mobilenet", 3, (32, 32, 3), alpha=0.25, weights="imagenet")  # offline-ok: skipped online
    assert time.time() - t0 < 30
