"""KerasHub backbones as `model.name: keras_hub`: two families (a ResNet CNN and a ViT) built
small, saved as local presets with random weights, then checked: parameter counts against
KerasHub's own and against the architecture's formula, blocks for topN, which weights move in a
phase, the .keras round trip in a fresh process, builtins-only export, QAT (the ResNet; the ViT,
KerasHub's own layers, is refused by name), and the errors a user meets (no keras-hub, a missing folder,
a hub handle offline)."""
import json
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub", reason="keras-hub is not installed (pip install -e '.[hub]')")

from conftest import ROOT  # noqa: E402
from kclassify.errors import ModelFileError, RecipeError  # noqa: E402

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
RESNET = dict(input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 32],
              stackwise_num_blocks=[1, 2], stackwise_num_strides=[1, 2], block_type="basic_block")
VIT = dict(image_shape=(32, 32, 3), patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)
# family: (unfreeze group "top1" -> backbone layers that train, with frozen BatchNorm)
TOP1 = {"resnet": {"stack1_block1_1_conv", "stack1_block1_2_conv"}, "vit": {"transformer_block_2", "ln"}}


def resnet_formula(cfg, channels=3):
    """Parameters of a KerasHub basic-block ResNet (convs without bias, BatchNorm with 4 per
    channel; a 1x1 projection opens every stack after the first)."""
    stem = cfg["input_conv_filters"][0]
    k = cfg["input_conv_kernel_sizes"][0]
    total, c = k * k * channels * stem + 4 * stem, stem
    for s, (f, n) in enumerate(zip(cfg["stackwise_num_filters"], cfg["stackwise_num_blocks"])):
        for b in range(n):
            total += 9 * c * f + 4 * f + 9 * f * f + 4 * f + ((c * f + 4 * f) if b == 0 and s > 0 else 0)
            c = f
    return total


def vit_formula(cfg):
    """Parameters of a ViT: patch embedding, class token, position embedding, per layer two
    LayerNorms, attention (q, k, v, out with biases) and the MLP, then the final LayerNorm."""
    d, m, p = cfg["hidden_dim"], cfg["mlp_dim"], cfg["patch_size"]
    h, w, c = cfg["image_shape"]
    tokens = (h // p) * (w // p) + 1
    layer = 4 * d + 4 * (d * d + d) + (d * m + m + m * d + d)
    return p * p * c * d + d + d + tokens * d + cfg["num_layers"] * layer + 2 * d


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    """{family: (preset folder, KerasHub's own parameter count, the formula's count)}."""
    root = tmp_path_factory.mktemp("presets")
    made = {}
    for family, backbone, converter, formula in (
            ("resnet", keras_hub.models.ResNetBackbone(**RESNET),
             keras_hub.layers.ResNetImageConverter(image_size=(32, 32), scale=[1 / (255 * s) for s in IMAGENET_STD],
                                                   offset=[-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]),
             resnet_formula(RESNET)),
            ("vit", keras_hub.models.ViTBackbone(**VIT),
             keras_hub.layers.ViTImageConverter(image_size=(32, 32), scale=1 / 127.5, offset=-1.0), vit_formula(VIT))):
        folder = root / family
        backbone.save_to_preset(str(folder))
        converter.save_to_preset(str(folder))
        made[family] = (folder, backbone.count_params(), formula)
    return made


def hub_recipe(tmp_path, npz, preset, phases):
    from kclassify.recipe import validate

    return validate({
        "name": "hub", "data": {"source": "npz", "path": str(npz), "val_fraction": 0.2},
        "model": {"name": "keras_hub", "params": {"preset": str(preset)}},
        "train": {"batch_size": 16, "optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.0},
        "finetune": {"phases": phases},
        "runtime": {"verbose": 0}, "output": {"dir": str(tmp_path / "run"), "tensorboard": False, "plots": False}})


@pytest.mark.parametrize("family", ["resnet", "vit"])
def test_parameter_counts(presets, family):
    from kclassify.models import build_model

    folder, library, formula = presets[family]
    model = build_model("keras_hub", 3, (32, 32, 3), preset=str(folder))
    backbone = model.get_layer("backbone").count_params()
    print(f"{family}: kclassify backbone {backbone:,}, KerasHub {library:,}, formula {formula:,}, "
          f"with the 3-class head {model.count_params():,}")
    assert backbone == library == formula
    assert model.count_params() == backbone + model.get_layer("head_dense").count_params()
    assert model.get_layer("preprocess").__class__.__name__ == "Rescaling"  # preprocessing inside the graph


def test_preprocessing_is_the_converters(presets):
    """The Rescaling layer computes what the preset's own ImageConverter computes."""
    from kclassify.models import build_model

    folder = presets["resnet"][0]
    model = build_model("keras_hub", 3, (32, 32, 3), preset=str(folder))
    pixels = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3)).astype("float32")
    ours = model.get_layer("preprocess")(pixels)
    theirs = keras_hub.layers.ImageConverter.from_preset(str(folder))(pixels)  # offline-ok: a local preset folder
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), atol=1e-5)


@pytest.mark.parametrize("family,blocks", [("resnet", ["stack0_block0", "stack1_block0", "stack1_block1"]),
                                           ("vit", ["transformer_block_1", "transformer_block_2"])])
def test_blocks_are_the_backbones_own(presets, family, blocks):
    from kclassify.train.unfreeze import backbone_blocks
    from kclassify.models import build_model
    from kclassify.models.applications import block_regex

    model = build_model("keras_hub", 3, (32, 32, 3), preset=str(presets[family][0]))
    found = backbone_blocks(model.get_layer("backbone"), block_regex("keras_hub"))
    assert [b for b in found if b != "stem"] == blocks


@pytest.mark.parametrize("family", [pytest.param(f, marks=pytest.mark.slow) for f in ("resnet", "vit")])  # 15-18 s each
def test_phase_round_trip_and_export(tmp_path, presets, tiny_npz, family):
    """top1 trains exactly its block (BatchNorm statistics included stay put), the model saves and
    loads in a fresh process, and exports to a builtins-only .tflite that agrees with Keras."""
    import keras

    from kclassify import runtime
    from kclassify.data.pipeline import train_dataset
    from kclassify.commands.export import export_tflite
    from kclassify.train.unfreeze import apply_phase
    from kclassify.commands.finetune import _data, block_pattern, engine_phases
    from kclassify.train.setup import build_for_run
    from kclassify.commands.checks import resolve_phases
    from kclassify.train.optim import make_loss, make_metrics, make_optimizer

    recipe = resolve_phases(hub_recipe(tmp_path, tiny_npz, presets[family][0], [{"unfreeze": "top1", "epochs": 1}]))
    strategy = runtime.setup(recipe.runtime)
    data = _data(recipe)
    model = build_for_run(recipe, data, strategy, fresh_start=True)
    unfrozen = apply_phase(model, "top1", block_pattern(recipe))
    assert {layer.name for layer in unfrozen} == TOP1[family]
    phase = engine_phases(recipe, block_pattern(recipe), echo=lambda *a: None)[0]
    multipliers = phase.setup(model)  # the engine's own phase set-up: layers, backbone lr multiplier
    model.compile(optimizer=make_optimizer(phase.train, 4, model, multipliers), loss=make_loss(phase.train),
                  metrics=make_metrics(3))
    before = snapshot(model)
    model.fit(train_dataset(data.train, 3, 16), epochs=1, verbose=0)
    after = snapshot(model)
    changed = {p for p in before if not np.array_equal(before[p], after[p])}
    assert changed == {w.path for w in model.trainable_weights}
    assert not any("_bn/" in p for p in changed)

    run = tmp_path / "saved"
    run.mkdir()
    keras.Model(model.input, model.output, name=model.name).save(run / "model.keras")  # as fit saves it: no optimizer
    probs = model.predict(data.val.images.astype("float32"), verbose=0)
    np.save(run / "expected.npy", probs)
    np.save(run / "images.npy", data.val.images)
    code = ("import sys, numpy as np, keras; d = sys.argv[1]; m = keras.models.load_model(d + '/model.keras'); "
            "p = m.predict(np.load(d + '/images.npy').astype('float32'), verbose=0); "
            "print(float(np.abs(p - np.load(d + '/expected.npy')).max()))")
    out = subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout.split()[-1]) < 1e-5  # plain Keras, fresh process: it imports KerasHub's layers itself
    with zipfile.ZipFile(run / "model.keras") as z:  # the ResNet is Keras layers only; the ViT is KerasHub's
        assert ('"module": "keras_hub.' in z.read("config.json").decode()) == (family == "vit")

    rep = export_tflite(run / "model.keras", "float32", model=keras.models.load_model(run / "model.keras"),
                        data=data, echo=lambda *a: None)
    assert rep["builtins_only"] and rep["agreement"] == 1.0 and rep["max_prob_diff"] < 1e-4


def snapshot(model):
    return {w.path: np.array(w.numpy()) for w in model.weights}


def test_qat_bridge_takes_the_resnet_and_names_the_vit_layer(presets):
    """The QAT bridge flattens the ResNet backbone (Keras layers only); the ViT stays KerasHub's
    own model, which it refuses by name before any child process starts."""
    from kclassify.models import build_model
    from kclassify.qat import QATError
    from kclassify.qat.graph import describe

    graph, _ = describe(build_model("keras_hub", 3, (32, 32, 3), preset=str(presets["resnet"][0])))
    assert {"Conv2D", "BatchNormalization", "Add"} <= {layer["class_name"] for layer in graph["layers"]}
    with pytest.raises(QATError, match="'backbone' of type ViTBackbone"):
        describe(build_model("keras_hub", 3, (32, 32, 3), preset=str(presets["vit"][0])))


def test_user_errors(tmp_path, presets, monkeypatch):
    from kclassify.data.tfds_source import online
    from kclassify.models import build_model

    with pytest.raises(ModelFileError, match="preset folder not found"):
        build_model("keras_hub", 3, (32, 32, 3), preset=str(tmp_path / "nothing"))
    with pytest.raises(RecipeError, match="needs model.params.preset"):
        build_model("keras_hub", 3, (32, 32, 3))
    with pytest.raises(RecipeError, match="takes 32x32 images only"):
        build_model("keras_hub", 3, (32, 32, 3), preset=str(presets["vit"][0]), input_size=64)
    with pytest.raises(RecipeError, match="takes 3-channel images but the data has 2"):
        build_model("keras_hub", 3, (32, 32, 2), preset=str(presets["resnet"][0]))
    gray = build_model("keras_hub", 3, (32, 32, 1), preset=str(presets["resnet"][0]))  # grayscale: repeated inside
    assert gray.input_shape[-1] == 1 and gray.get_layer("gray_to_rgb") is not None
    if not online():  # a handle that exists nowhere: offline it must fail in seconds, with the way out
        t0 = time.time()
        with pytest.raises(ModelFileError, match="set model.params.preset=DIR"):
            build_model("keras_hub", 3, (32, 32, 3), preset="kaggle://nobody/none/keras/none")  # offline-ok: skipped online
        assert time.time() - t0 < 30
    monkeypatch.setitem(sys.modules, "keras_hub", None)  # as if keras-hub were not installed
    with pytest.raises(RecipeError, match=r"pip install \"kclassify\[hub\]\""):
        build_model("keras_hub", 3, (32, 32, 3), preset=str(presets["resnet"][0]))


@pytest.mark.slow  # the slow tier (-m slow): keeps the fast tier under 8 minutes on 2 cores
def test_core_never_imports_keras_hub():
    code = ("import sys, kclassify, kclassify.models, kclassify.train.unfreeze; "
            "print('keras_hub' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0 and out.stdout.split()[-1] == "False", out.stderr[-1000:]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["resnet", "vit"])
def test_finetune_cli_int8_and_report(tmp_path, presets, tiny_npz, family):
    """The whole path through the CLI: three phases, an int8 export, QAT, and the run's report."""
    from conftest import run_cli

    recipe = tmp_path / "hub.yaml"
    recipe.write_text(f"data: {{source: npz, path: {tiny_npz}, val_fraction: 0.2}}\n"
                      f"model: {{name: keras_hub, params: {{preset: {presets[family][0]}}}}}\n"
                      "train: {batch_size: 16, optimizer: adamw, lr: 3.0e-3, weight_decay: 0.0}\n"
                      "output: {export: [int8], tensorboard: false}\n")
    run = tmp_path / "run"
    out = run_cli("finetune", recipe, "--unfreeze-schedule", "head:1,top1:1,all:2", "--out", run)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "phase 2: unfreeze top1" in out.stdout
    rep = json.loads((run / "model_int8.json").read_text())
    assert rep["builtins_only"] and rep["input"]["dtype"] == "uint8" and rep["agreement"] >= 0.9
    out = run_cli("qat", run, "--epochs", "1")
    if family == "resnet":  # QAT int8 through tfmot, measured like export
        assert out.returncode == 0, out.stderr[-3000:]
        assert json.loads((run / "model_qat_int8.json").read_text())["builtins_only"]
    else:
        assert out.returncode == 2 and "ViTBackbone" in out.stderr
    out = run_cli("report", run)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "model_int8.tflite" in (run / "report.html").read_text()
