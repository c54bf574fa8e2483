"""The QAT bridge: Keras 3 models rebuilt exactly in tf_keras inside a child process, tfmot
quantization-aware training to an int8 .tflite with uint8 input, pruning to a target sparsity,
and a parent process that never switches to legacy Keras."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, run_cli
from kclassify.qat import QATError, missing_packages

needs_tfmot = pytest.mark.skipif(bool(missing_packages()),
                                 reason='needs tf-keras and tensorflow-model-optimization: pip install "kclassify[qat]"')


def realistic(model, seed=0):
    """Give a freshly built model non-trivial BatchNorm statistics: one training-mode pass with
    momentum 0 stores each BN's batch statistics (so activations stay unit-scale in inference
    and the softmax is not saturated), plus random gamma/beta, so the exactness check means
    something (a random-init deep net otherwise outputs one-hot probabilities)."""
    import keras

    from kclassify.qat.graph import all_layers

    rng = np.random.default_rng(seed)
    bns = [layer for layer in all_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in bns:
        layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape).astype("float32"))
        layer.beta.assign(rng.normal(0, 0.2, layer.beta.shape).astype("float32"))
        layer.momentum = 0.0
    images = rng.integers(0, 256, (16, *model.input_shape[1:])).astype("float32")
    model(images, training=True)
    for layer in bns:
        layer.momentum = 0.9
    return model


def mini_bottleneck():
    """Grouped bottlenecks with SE (sigmoid gate), ResNet-D average-pool shortcuts, stochastic
    depth and DropBlock: the ImageNet ResNet/ResNeXt/SE machinery at CIFAR size."""
    import keras

    from kclassify.models import dropblock_hook
    from kclassify.models.blocks import ResidualStyle, classifier_head, conv_bn, model_input, residual_stages

    inputs, x = model_input((32, 32, 3), None, None)
    x = conv_bn(x, 16, 3, 1, "stem", 0.9)
    style = ResidualStyle(bottleneck=True, groups=4, se_ratio=4, shortcut="D", zero_gamma=False)
    x = residual_stages(x, [(1, 32, 16, 1), (1, 64, 32, 2)], style, 0.9, drop_path_rate=0.1,
                        drop_block=dropblock_hook(0.9, 3))
    return keras.Model(inputs, classifier_head(x, 10, dropout=0.2), name="mini_se_resnext_d")


def odd_layers():
    """Every remaining supported layer type once: Rescaling (per channel, and on logits),
    ReLU/Softmax layers, relu6/silu/tanh activations, ZeroPadding2D, MaxPooling2D, Reshape,
    Flatten, GlobalMaxPooling2D, a conv with a fused activation, a depthwise multiplier, BN on
    rank-2 tensors."""
    import keras
    from keras import layers

    inputs = keras.Input((16, 16, 3), name="pixels")
    x = layers.Rescaling([1 / 255.0, 1 / 128.0, 1 / 64.0], offset=[-0.5, -1.0, 0.0], name="rescale")(inputs)
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(x)
    x = layers.ZeroPadding2D(((1, 0), (0, 1)), name="zpad")(x)
    x = layers.MaxPooling2D(2, name="mpool")(x)
    x = layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw")(x)
    x = layers.BatchNormalization(name="dw_bn")(x)
    x = layers.Activation("relu6", name="dw_relu6")(x)
    y = layers.Conv2D(16, 1, name="c2")(x)
    y = layers.ReLU(max_value=4.0, negative_slope=0.1, name="leaky")(y)
    z = layers.Activation("silu", name="swish")(x)
    z = layers.Activation("tanh", name="tanh")(z)
    x = layers.Add(name="add")([y, z])
    g = layers.GlobalMaxPooling2D(name="gmax")(x)
    f = layers.Flatten(name="flat")(layers.AveragePooling2D(4, name="apool")(x))
    f = layers.Reshape((4, 16), name="reshape")(f)
    f = layers.Flatten(name="flat2")(f)
    x = layers.Concatenate(name="concat")([g, f])
    x = layers.BatchNormalization(name="concat_bn")(x)  # rank 2, after a concat: a fixed affine
    x = layers.BatchNormalization(name="fc_bn")(layers.Dense(16, name="fc")(x))  # Dense + BN: kept
    x = layers.Activation("relu", name="fc_relu")(x)
    x = layers.Dense(10, name="logits")(x)
    x = layers.Rescaling(0.5, name="logit_scale")(x)
    return keras.Model(inputs, layers.Softmax(name="probs")(x), name="odd_layers")


def nested_kclassify():
    """keras_kclassify: a kclassify ResNet-20 (option-A shortcuts, its own normalization) cut at
    its pooling layer and nested as the backbone of a fine-tuning model."""
    import tempfile

    from kclassify.models import build_model

    base = realistic(build_model("resnet20", 10, (32, 32, 3), width_mult=0.5), seed=5)
    path = tempfile.mkdtemp(prefix="kc-base-") + "/base.keras"
    base.save(path)
    return build_model("keras_kclassify", 10, (32, 32, 3), weights=path)


def twice_nested():
    """A functional model inside a functional model inside the outer one, with layer names that
    collide across levels (the inner ones get their model's prefix) and a frozen inner layer."""
    import keras
    from keras import layers

    inp = keras.Input((16, 16, 3))
    core = keras.Model(inp, layers.Conv2D(8, 3, padding="same", activation="relu", name="conv")(inp), name="core")
    mid_in = keras.Input((16, 16, 3))
    x = layers.Rescaling(1 / 255.0, name="scale")(mid_in)
    x = core(x)
    x = layers.BatchNormalization(name="bn")(layers.Conv2D(8, 1, name="conv")(x))
    mid = keras.Model(mid_in, x, name="mid")
    outer_in = keras.Input((16, 16, 3), name="pixels")
    y = mid(outer_in)
    y = layers.Conv2D(4, 1, name="conv")(y)
    y = layers.GlobalAveragePooling2D(name="pool")(y)
    core.get_layer("conv").trainable = False
    return keras.Model(outer_in, layers.Softmax(name="probs")(layers.Dense(10, name="dense")(y)), name="twice_nested")


def inner_activations():
    """Activations tfmot takes only as layers of their own, inside a Conv2D / DepthwiseConv2D /
    Dense (hard_silu, relu6, sigmoid, silu): graph.py used to accept them and the child to refuse."""
    import keras
    from keras import layers

    inp = keras.Input((16, 16, 3))
    x = layers.Conv2D(8, 3, activation="hard_silu", name="c1")(layers.Rescaling(1 / 255.0)(inp))
    x = layers.DepthwiseConv2D(3, activation="relu6", name="dw")(x)
    x = layers.Conv2D(8, 1, activation="silu", name="c2")(x)
    x = layers.Dense(8, activation="sigmoid", name="d1")(layers.GlobalAveragePooling2D()(x))
    return keras.Model(inp, layers.Dense(10, activation="softmax", name="d2")(x), name="inner_activations")


def _build(name, **params):
    from kclassify.models import build_model

    return build_model(name, 10, (32, 32, 3), **params)


def _preact(depth, **params):
    from kclassify.models.preact_resnet import preact_resnet

    return preact_resnet(depth, 10, (32, 32, 3), **params)


def _densenet10():
    from kclassify.models.densenet import densenet

    return densenet(10, 10, (32, 32, 3), growth_rate=4, cifar_stem=True)


# Each group is checked by one worker process (each well under a minute on a busy 2-core box).
# (model name, builder, also run tfmot's quantize_apply): every registered fast architecture
# (resnet32/44 are resnet20/56's builder), the slow families at CIFAR size and width.
GROUPS = {
    "cifar": [("resnet20", lambda: _build("resnet20"), True),
              ("resnet56", lambda: _build("resnet56", width_mult=0.25), False),
              ("resnet9", lambda: _build("resnet9", width=8), True),
              ("wrn16_4", lambda: _build("wrn16_4", dropout=0.3), True)],
    "preact": [("preact_resnet8", lambda: _preact(8, se_ratio=4, block_dropout=0.2, drop_path_rate=0.1), True),
               ("preact_resnet11", lambda: _preact(11, bottleneck=True), True),
               ("densenet10", _densenet10, True)],
    "mobile": [("mobilenet_v3_small", lambda: _build("mobilenet_v3_small", cifar_stem=True, width_mult=0.35,
                                                     drop_path_rate=0.1), True),
               ("mini_se_resnext_d", mini_bottleneck, True),
               ("odd_layers", odd_layers, True)],
    "imagenet": [("googlenet", lambda: _build("googlenet"), True),
                 ("squeezenet1_0", lambda: _build("squeezenet1_0"), True)],
    "nested": [("mobilenet_finetune", lambda: _build("keras_mobilenet", alpha=0.25, dropout=0.2), True),
               ("mobilenet_v2_finetune", lambda: _build("keras_mobilenet_v2", alpha=0.35, input_size=48), True),
               ("kclassify_finetune", lambda: nested_kclassify(), True),
               ("twice_nested", twice_nested, True),
               ("inner_activations", inner_activations, True)],
}
GROUP_OF = {name: group for group, rows in GROUPS.items() for name, _, _ in rows}


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    """check(group) -> ({name: worker row}, child environment): the group's models made
    realistic, translated, compared and quantized by tfmot in one child process (cached)."""
    from kclassify.commands.qat import check_models

    if missing_packages():
        pytest.skip('needs tf-keras and tensorflow-model-optimization: pip install "kclassify[qat]"')
    cache = {}

    def check(group):
        if group not in cache:
            rows = GROUPS[group]
            models = [realistic(build(), seed=i) for i, (_, build, _) in enumerate(rows)]
            assert [m.name for m in models] == [name for name, _, _ in rows]
            got, env = check_models(models, tmp_path_factory.mktemp(group), quantize=[q for _, _, q in rows],
                                    samples=8, echo=lambda *a: None)
            cache[group] = {r["name"]: r for r in got}, env
        return cache[group]

    return check


@pytest.mark.slow  # the slow tier (-m slow): keeps the fast tier under 8 minutes on 2 cores
@needs_tfmot
# the imagenet-sized, mobile and nested groups in the slow tier (22, 25 and 30 s of the fast one);
# the fast one keeps the CIFAR and pre-activation families (nesting is also checked without tfmot below)
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if g in ("imagenet", "mobile", "nested")
                                  else n for n, g in GROUP_OF.items()])
def test_translation_is_exact_and_tfmot_accepts_it(checked, name):
    rows, _ = checked(GROUP_OF[name])
    row = rows[name]
    assert "error" not in row, row.get("error")
    assert row["max_abs_diff"] < 1e-5
    if dict((n, q) for n, _, q in GROUPS[GROUP_OF[name]])[name]:
        assert row["quantized_layers"] >= row["layers"]


@pytest.mark.slow  # 15-30 s of the fast tier (two workers on 2 cores)
@needs_tfmot
def test_translation_replacements(checked):
    rows = {**checked("cifar")[0], **checked("preact")[0], **checked("mobile")[0]}
    assert rows["resnet20"]["replaced"]["fixed"] == ["normalize", "stage2_block1_short_pad", "stage3_block1_short_pad"]
    assert "head_scale" in rows["resnet9"]["replaced"]["output"]  # a Rescaling of logits: MUL by a constant
    mobile = rows["mobilenet_v3_small"]["replaced"]["output"]
    assert "stem_hard_swish" in mobile and "stage1_block1_se_hard_sigmoid" in mobile and "stage1_block1_se_scale" in mobile
    # pre-activation BN after an Add / a Concatenate becomes an affine depthwise conv; BN after a conv stays
    assert "stage2_block1_1_bn" in rows["preact_resnet8"]["replaced"]["affine"]
    assert "head_pre_bn" in rows["densenet10"]["replaced"]["affine"]
    assert "stage1_block1_1_bn" in rows["preact_resnet8"]["replaced"]["affine"]  # the stem conv also feeds the shortcut
    assert "stage1_block1_2_bn" not in rows["preact_resnet8"]["replaced"]["affine"]  # its conv feeds it alone
    assert rows["resnet20"]["replaced"]["affine"] == []
    assert {"concat_bn", "logit_scale"} <= set(rows["odd_layers"]["replaced"]["output"])
    assert "fc_bn" not in str(rows["odd_layers"]["replaced"])


@needs_tfmot
def test_parent_never_legacy_keras_child_always(checked):
    import keras

    _, env = checked("cifar")
    assert "TF_USE_LEGACY_KERAS" not in os.environ
    assert keras.__version__.startswith("3.") and "tensorflow_model_optimization" not in sys.modules
    assert "tf_keras" not in sys.modules
    assert env["TF_USE_LEGACY_KERAS"] == "1" and env["keras_imported"] is False
    assert set(env["kclassify_modules"]) <= {"kclassify", "kclassify.errors", "kclassify.registration", "kclassify.qat", "kclassify.qat.job",
                                             "kclassify.qat.table", "kclassify.qat.translate"}


@needs_tfmot
def test_mismatch_fails_loudly(tmp_path):
    import keras

    from kclassify.qat.graph import write_model
    from kclassify.qat.job import Job, ModelFiles
    from kclassify.commands.qat import run_worker

    inputs = keras.Input((8, 8, 1))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(inputs)), name="tiny")
    entry = write_model(model, tmp_path / "m", np.random.default_rng(0).integers(0, 256, (4, 8, 8, 1)))
    samples = dict(np.load(entry["samples"]))
    np.savez(entry["samples"], images=samples["images"], outputs=samples["outputs"] + 1e-3)
    job = Job(task="check", result=str(tmp_path / "result.json"), tolerance=1e-5,
              models=[ModelFiles(name="tiny", quantize=False, **entry)])
    (row,) = run_worker(job, tmp_path, echo=lambda *a: None)["models"]
    assert "differs from the Keras 3 model" in row["error"] and "0.001" in row["error"]


def test_job_file_is_typed_and_complete(tmp_path):
    """The child refuses a job with a missing or unknown setting (exit 2, one line), so no
    default is guessed on its side: recipe.QATConfig states them once."""
    from kclassify.qat.job import Job, ModelFiles
    from kclassify.commands.qat import run_worker

    job = Job(task="qat", result=str(tmp_path / "result.json"), tolerance=1e-5,
              model=ModelFiles(graph="g", weights="w", samples="s", name="m", quantize=True))
    with pytest.raises(QATError, match="a qat job needs data, train, out"):
        run_worker(job, tmp_path, echo=lambda *a: None)
    raw = {"task": "check", "result": str(tmp_path / "result.json"), "tolerance": 1e-5, "models": [], "lr": 0.1}
    (tmp_path / "job.json").write_text(json.dumps(raw))
    from kclassify.qat.job import JobError

    with pytest.raises(JobError, match="unknown field.*lr"):
        Job.read(tmp_path / "job.json")


def test_unsupported_layer_named_with_its_type():
    import keras

    from kclassify.models.preact_resnet import preact_resnet
    from kclassify.qat.graph import describe

    with pytest.raises(QATError, match=r"layer 'head_pool' of type GeMPooling2D is not supported"):
        describe(preact_resnet(8, 10, (32, 32, 3), pooling="gem"))
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.LayerNormalization(name="ln")(inputs)
    with pytest.raises(QATError, match=r"layer 'ln' of type LayerNormalization"):
        describe(keras.Model(inputs, x))
    inner = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 1)], name="backbone")
    outer_in = keras.Input((8, 8, 3))
    with pytest.raises(QATError, match=r"'backbone' of type Sequential.*nested Sequential"):
        describe(keras.Model(outer_in, inner(outer_in)))
    x = keras.layers.Conv2D(4, 1, activation="gelu", name="conv_gelu")(inputs)
    with pytest.raises(QATError, match=r"'conv_gelu'.*'gelu'"):  # refused here, not in the child
        describe(keras.Model(inputs, x))
    x = keras.layers.Activation("gelu", name="act")(inputs)
    with pytest.raises(QATError, match=r"'act'.*'gelu'"):
        describe(keras.Model(inputs, x))
    with pytest.raises(QATError, match="needs a functional Keras model, got Sequential"):
        describe(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]))


def test_keras_hub_layer_refused_in_one_line_with_its_path_and_class():
    """A KerasHub layer inside a nested backbone: one line names where it sits, its class and
    its package (what `kclassify qat` prints after "error: ")."""
    import keras

    keras_hub = pytest.importorskip("keras_hub")
    from kclassify.qat.graph import describe

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Reshape((64, 4), name="tokens")(keras.layers.Conv2D(4, 1, name="conv")(inputs))
    backbone = keras.Model(inputs, keras_hub.layers.PositionEmbedding(64, name="pos")(x), name="backbone")
    outer = keras.Input((8, 8, 3))
    with pytest.raises(QATError) as refused:
        describe(keras.Model(outer, keras.layers.Dense(2, name="head")(backbone(outer))))
    message = str(refused.value)
    assert "\n" not in message and len(message) < 250
    assert message.startswith("layer 'backbone/pos' of type PositionEmbedding is not supported by the QAT bridge")
    assert "keras_hub's PositionEmbedding" in message


def test_without_tfmot_the_commands_exit_2_with_the_install_hint(monkeypatch, capsys, tmp_path):
    import kclassify.qat
    from kclassify import cli

    monkeypatch.setattr(kclassify.qat, "NEEDS", ("tensorflow_model_optimization_absent",))
    for args in (["qat", str(tmp_path)], ["prune", str(tmp_path), "--sparsity", "0.5"]):
        monkeypatch.setattr(sys, "argv", ["kclassify", *args])
        with pytest.raises(SystemExit) as exit_info:
            cli.main()
        assert exit_info.value.code == 2
        assert 'pip install "kclassify[qat]"' in capsys.readouterr().err


_STEP_AUGMENT = """
import json, sys
from kclassify.qat import worker
from kclassify.qat.job import Augment, Training

worker.isolate()
import numpy as np
import tensorflow as tf
import tf_keras as K

rng = np.random.default_rng(0)
data = {"images": rng.integers(0, 255, (96, 8, 8, 3)).astype("uint8"), "labels": rng.integers(0, 3, 96)}
losses = {}
for on_device in (False, True):
    K.utils.set_random_seed(0)
    model = K.Sequential([K.Input((8, 8, 3)), K.layers.Rescaling(1 / 255), K.layers.Flatten(), K.layers.Dense(3)])
    augment = Augment(crop_pad=0, pad_mode="reflect", flip=False, on_device=on_device)
    train = Training(epochs=2, steps_per_epoch=None, batch_size=32, optimizer="sgd", lr=0.01, momentum=0.0,
                     weight_decay=0.0, freeze_bn=False, calibration_batches=1, range_log_every=0, seed=0,
                     augment=augment)
    history, _ = worker.fine_tune(model, train, data)
    first = next(iter(worker.train_dataset(data["images"], data["labels"], 32, augment, 0, False)))[0]
    losses[str(on_device)] = {"loss": [row["loss"] for row in history], "dtype": first.dtype.name}


class Probe:  # a train step that returns what it was given
    def train_step(self, data):
        return data


probe = Probe()
worker.augment_in_step(probe, Augment(crop_pad=2, pad_mode="constant", flip=False, on_device=True))
x, _ = probe.train_step((np.full((16, 8, 8, 3), 255, "uint8"), np.zeros(16, "int32")))
losses["probe"] = {"dtype": x.dtype.name, "shifted": float((x.numpy() == 0).any(axis=(1, 2, 3)).mean())}
print(json.dumps(losses))
"""


@needs_tfmot
def test_the_worker_augments_inside_the_step_when_the_recipe_says_device(tmp_path):
    """runtime.augment_on reaches QAT and pruning: with on_device the batches stay uint8 and the
    tf_keras step augments them, computing what the tf.data map computes."""
    out = subprocess.run([sys.executable, "-c", _STEP_AUGMENT], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    runs = json.loads(out.stdout.strip().splitlines()[-1])
    assert runs["False"]["dtype"] == "float32" and runs["True"]["dtype"] == "uint8"
    np.testing.assert_allclose(runs["True"]["loss"], runs["False"]["loss"], rtol=1e-5)
    assert runs["probe"]["dtype"] == "float32" and runs["probe"]["shifted"] > 0.5  # the step translated them


@pytest.mark.slow  # the slow tier (-m slow): keeps the fast tier under 8 minutes on 2 cores
@needs_tfmot
def test_qat_gives_measured_int8_with_uint8_input(digits_run):
    from ai_edge_litert.interpreter import Interpreter

    from kclassify.commands.qat import qat

    lines = []
    rep = qat(digits_run, steps=100, keep="qat", echo=lines.append)  # 23 steps: the ranges have not settled
    path = digits_run / "model_qat_int8.tflite"
    assert rep["file"] == str(path) and path.is_file() and rep["kind"] == "qat-int8"
    # the run's own optimizer at a fraction of its peak rate, and post-training int8 beside it
    from kclassify.recipe import QATConfig

    assert rep["optimizer"] == "sgd" and rep["lr"] == pytest.approx(QATConfig().lr_fraction * 0.05)
    both = rep["comparison"]
    assert both["post_training"]["tflite"]["count"] == both["qat"]["tflite"]["count"] == 360
    assert "QAT int8 (qat.keep=qat)" in rep["kept"] and any("post-training int8" in line for line in lines)
    assert rep["input"]["dtype"] == "uint8" and rep["input"]["scale"] == 1.0 and rep["input"]["zero_point"] == 0
    assert rep["output"]["dtype"] == "float32" and rep["builtins_only"]
    ops = {op["op_name"] for op in Interpreter(model_path=str(path))._get_ops_details()}
    assert "CONV_2D" in ops and not any(o.startswith("Flex") or o == "CUSTOM" for o in ops)
    assert rep["worker"]["translation_max_abs_diff"] < 1e-5 and rep["worker"]["steps"] == 100
    assert rep["tflite"]["count"] == 360 and rep["tflite"]["top1"] >= rep["keras"]["top1"] - 0.03
    assert rep["agreement"] >= 0.95
    assert abs(rep["tflite"]["top1"] - rep["worker"]["fake_quant_top1"]) <= 0.02  # the file does what QAT simulated
    saved = json.loads(path.with_suffix(".json").read_text())
    assert saved["class_names"] == [str(i) for i in range(10)] and saved["tflite"]["top1"] == rep["tflite"]["top1"]


# slow tier (keeps the fast one under 15 minutes on 2 cores); QAT itself stays fast
@pytest.mark.slow
@needs_tfmot
def test_qat_keeps_the_better_file(digits_run, tmp_path):
    """With too high a learning rate QAT ruins the net; by default the post-training int8 file is
    shipped instead, and the report says why; the QAT file is kept beside it."""
    from kclassify.commands.qat import qat

    rep = qat(digits_run, epochs=1, lr=5.0, out=tmp_path / "q.tflite", echo=lambda *a: None)
    both = rep["comparison"]
    assert both["qat"]["tflite"]["top1"] < both["post_training"]["tflite"]["top1"]
    assert rep["kind"] == "post-training-int8" and rep["kept"].startswith("post-training int8")
    assert rep["tflite"] == both["post_training"]["tflite"] and (tmp_path / "q_rejected.tflite").is_file()
    saved = json.loads((tmp_path / "q.json").read_text())
    assert saved["kept"] == rep["kept"] and saved["qat_run"]["lr"] == 5.0


def test_nested_models_flatten_into_one_graph():
    from kclassify.qat.graph import describe

    graph, weights = describe(twice_nested())
    names = [layer["name"] for layer in graph["layers"]]
    assert names == ["pixels", "scale", "mid_core_conv", "mid_conv", "bn", "conv", "pool", "dense", "probs"]
    by = {layer["name"]: layer for layer in graph["layers"]}
    assert by["mid_core_conv"]["path"] == "mid/core/conv" and by["mid_core_conv"]["inbound"] == ["scale"]
    assert by["scale"]["inbound"] == ["pixels"] and by["conv"]["inbound"] == ["bn"]
    assert not by["mid_core_conv"]["trainable"] and by["mid_conv"]["trainable"]
    assert "mid_core_conv::kernel" in weights and graph["inputs"] == ["pixels"] and graph["outputs"] == ["probs"]
    assert not any(layer["class_name"] == "Functional" for layer in graph["layers"])


def test_one_table_of_layers_for_both_sides():
    """graph.py describes and translate.py builds the same layer types: table.py's."""
    import subprocess

    from kclassify.qat.graph import COMPUTED
    from kclassify.qat.table import LAYERS

    assert set(COMPUTED) == {name for name, kind in LAYERS.items() if kind.computed}
    code = ("import json; from kclassify.qat.translate import builders; print(json.dumps(sorted(builders())))")
    from kclassify.commands.qat import child_environment

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_environment())
    assert out.returncode == 0, out.stderr[-1000:]
    assert json.loads(out.stdout) == sorted(name for name, kind in LAYERS.items() if not kind.dropped)


@pytest.mark.slow  # 15-30 s of the fast tier (two workers on 2 cores)
@needs_tfmot
def test_nested_translation_keeps_frozen_layers_and_splits_inner_activations(checked):
    rows = checked("nested")[0]
    assert "mid_core_conv" in rows["twice_nested"]["frozen"] and "mid_conv" not in rows["twice_nested"]["frozen"]
    split = rows["inner_activations"]["replaced"]["output"]
    assert "c1_act" in split and "dw_act" not in split  # hard-swish: output quantized; relu6: a ReLU layer
    assert "backbone" not in str(rows["mobilenet_finetune"]["replaced"])  # no nested model left


@needs_tfmot
# slow tier (keeps the fast one under 15 minutes on 2 cores); nested translation stays fast
@pytest.mark.slow
def test_qat_of_a_fine_tuned_mobilenet(tmp_path):
    """The pretrained MobileNet (a nested Keras Applications backbone) fine-tuned in two phases on
    a few coloured images, then QAT: exact translation, only the last phase's layers train."""
    from conftest import shared_file
    from kclassify.commands.finetune import finetune
    from kclassify.qat.graph import describe
    from kclassify.commands.qat import Prepared, qat
    from kclassify.recipe import validate

    weights = shared_file("weights/mobilenet_2_5_224_tf_no_top.h5")
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 30)
    images = rng.integers(0, 80, (90, 32, 32, 3)).astype(np.uint8)
    for c in range(3):
        images[labels == c, :, :, c] += 150
    np.savez(tmp_path / "tiny.npz", x=images, y=labels, class_names=np.array(["r", "g", "b"]))
    recipe = validate({
        "name": "ft", "data": {"source": "npz", "path": str(tmp_path / "tiny.npz"), "val_fraction": 0.2},
        "model": {"name": "keras_mobilenet", "params": {"alpha": 0.25, "weights": str(weights)}},
        "train": {"batch_size": 16, "optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-4},
        "finetune": {"phases": [{"unfreeze": "head", "epochs": 1}, {"unfreeze": "top2", "epochs": 1}]},
        "runtime": {"verbose": 0}, "output": {"dir": str(tmp_path / "run"), "tensorboard": False, "plots": False,
                                              "report": False}})
    run = finetune(recipe, echo=lambda *a: None)
    prep = Prepared(run, {}, "qat", echo=lambda *a: None)
    graph, _ = describe(prep.model)
    trains = {layer["name"] for layer in graph["layers"] if layer["trainable"] and layer["weights"]}
    assert trains == {"conv_dw_12", "conv_pw_12", "conv_dw_13", "conv_pw_13", "head_dense"}
    rep = qat(run, steps=4, keep="qat", echo=lambda *a: None)
    worker = rep["worker"]
    assert worker["translation_max_abs_diff"] < 1e-5 and worker["steps"] == 4
    assert rep["optimizer"] == "adamw" and "unfreeze top2" in rep["trainable"]
    assert rep["builtins_only"] and rep["input"]["dtype"] == "uint8" and rep["tflite"]["count"] == 18
    assert rep["comparison"]["post_training"]["tflite"]["count"] == 18


# slow tier (keeps the fast one under 15 minutes on 2 cores); pruning end to end also runs in the slow mobilenet_v3 test
@pytest.mark.slow
@needs_tfmot
def test_prune_reaches_the_target_sparsity(digits_run):
    res = run_cli("prune", digits_run, "--sparsity", "0.5", "--epochs", "1")
    assert res.returncode == 0, res.stderr[-2000:]
    rep = json.loads((digits_run / "model_pruned.json").read_text())
    assert abs(rep["sparsity"] - 0.5) <= 0.02 and rep["worker"]["prunable_params"] > 250_000
    assert all(abs(layer["sparsity"] - 0.5) <= 0.02 for layer in rep["worker"]["per_layer"].values())
    assert rep["input"]["dtype"] == "float32" and rep["tflite"]["count"] == 360
    assert rep["gzip_bytes"] < 0.8 * rep["dense_float32_gzip_bytes"]
    assert abs(rep["tflite"]["top1"] - rep["worker"]["pruned_top1"]) <= 0.01  # the file is the pruned model
    assert rep["tflite"]["top1"] >= 0.8  # half the weights gone after 23 steps: some loss, no collapse
    assert "sparsity 0.5" in res.stdout and "model_pruned.tflite" in res.stdout


@needs_tfmot
def test_bad_option_fails_before_work(digits_run):
    res = run_cli("prune", digits_run, "--sparsity", "1.5")
    assert res.returncode == 2 and "qat.sparsity" in res.stderr


@needs_tfmot
@pytest.mark.slow
def test_mobilenet_v3_qat_and_constant_pruning_end_to_end(tmp_path):
    """Hard-swish + SE (hard-sigmoid gate, Multiply) through QAT: every op integer, accuracy kept;
    then one-shot (constant) pruning with an int8 copy."""
    from ai_edge_litert.interpreter import Interpreter

    from conftest import tiny_recipe
    from kclassify.commands.qat import prune, qat
    from kclassify.commands.fit import fit

    recipe = tiny_recipe(tmp_path, data={"image_size": 16},
                         model={"name": "mobilenet_v3_small", "params": {"cifar_stem": True, "width_mult": 0.5}},
                         train={"epochs": 10, "weight_decay": 4e-5}, augment={"crop_pad": 2, "pad_mode": "constant"})
    run = fit(recipe, echo=lambda *a: None)
    rep = qat(run, epochs=1, echo=lambda *a: None)
    ops = {op["op_name"] for op in Interpreter(model_path=rep["file"])._get_ops_details()}
    assert {"HARD_SWISH", "MUL", "DEPTHWISE_CONV_2D"} <= ops and rep["builtins_only"]
    interp = Interpreter(model_path=rep["file"])
    assert [d["name"] for d in interp.get_tensor_details() if d["dtype"] == np.float32] == ["Identity"]  # only the output
    assert rep["tflite"]["top1"] >= rep["keras"]["top1"] - 0.03 and rep["agreement"] >= 0.95
    rep = prune(run, sparsity=0.5, schedule="constant", epochs=2, int8=True, echo=lambda *a: None)
    assert abs(rep["sparsity"] - 0.5) <= 0.02 and rep["int8"]["tflite"]["top1"] >= 0.8
    assert (run / "model_pruned_int8.tflite").is_file()
