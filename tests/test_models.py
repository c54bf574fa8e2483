"""Registry-driven model tests: every registered model is built, run forward and backward,
round-tripped through .keras and converted to builtins-only TFLite; no per-model test code."""
import numpy as np
import pytest

from harness import check_config, check_fresh_process, check_gradients, check_keras_file, check_tflite
from kclassify.models import MODELS, build_model

GENERIC = [n for n in MODELS.names() if MODELS.info(n).get("generic_tests", True)]
FAST = [n for n in GENERIC if not MODELS.info(n).get("slow")]
SLOW = [n for n in GENERIC if MODELS.info(n).get("slow")]
DEEPER = {"resnet44", "resnet56"}  # deeper copies of resnet20/32's family: the slow tier checks them

# Trainable parameters at 10 classes, 32x32x3 (BN moving statistics are not trainable and
# not counted, as in the papers). CIFAR ResNets: exact counts of the option-A reference
# implementation; WRNs (100 classes): the paper's 36.5M / 11.0M / 8.9M, within 1%.
EXACT = {"resnet20": 269_722, "resnet32": 464_154, "resnet44": 658_586, "resnet56": 853_018,
         "resnet110": 1_727_962, "resnet1202": 19_421_274}
PAPER_100 = {"wrn28_10": 36.5e6, "wrn16_8": 11.0e6, "wrn40_4": 8.9e6}

# Trainable parameters at 1000 classes = the reference implementation's parameter count
# (torchvision; timm/Cadene for SE-ResNet-50; liuzhuang13's DenseNet-BC-100 at 10 classes).
# Built at 32x32 except VGG, whose flattened head depends on the 224x224 input.
REFERENCE = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032, "resnet101": 44_549_160,
             "resnet152": 60_192_808, "se_resnet50": 28_088_024, "resnext50_32x4d": 25_028_904,
             "densenet121": 7_978_856, "densenet201": 20_013_928, "mobilenet_v3_large": 5_483_032,
             "mobilenet_v3_small": 2_542_856, "squeezenet1_0": 1_248_424, "vgg16_bn": 138_365_992,
             "vgg19_bn": 143_678_248}
REFERENCE_10 = {"densenet100_bc_k12": 769_162}
# Papers' rounded figures: (figure, classes, tolerance, count BN?). The pre-activation paper
# counts weights without BN (1001 layers: 10.18M without, 10.33M with); its "1.7M" for
# ResNet-110 is 1.72M, inside the figure's own rounding (+-0.05M) but not within 1%.
PAPER = {"preact_resnet110": (1.7e6, 10, 0.03, False), "preact_resnet164": (1.7e6, 10, 0.015, False),
         "preact_resnet1001": (10.2e6, 10, 0.01, False), "resnext29_8x64d": (34.4e6, 100, 0.01, True),
         "resnext29_16x64d": (68.1e6, 100, 0.01, True), "densenet190_bc_k40": (25.6e6, 10, 0.01, True),
         "se_resnext50_32x4d": (27.6e6, 1000, 0.01, True), "se_wrn28_10": (36.5e6, 100, 0.01, True)}
SLOW_COUNT = {"resnet1202", "resnet101", "preact_resnet1001", "vgg16_bn", "vgg19_bn", "resnet152", "resnext29_16x64d",
              "densenet190_bc_k40", "densenet201"}


def trainable(model, with_bn=True):
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights if with_bn or "_bn/" not in v.path)


def tier(names):
    """Count tests of the few models that take long to build go to the slow tier."""
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_COUNT else n for n in sorted(names)]


def check_model(name, size=32, channels=3):
    model = build_model(name, 5, (size, size, channels))
    x = np.random.default_rng(0).uniform(0, 255, (2, size, size, channels)).astype("float32")
    probs = check_gradients(model, x, 5)
    assert probs.shape == (2, 5) and np.allclose(probs.numpy().sum(1), 1, atol=1e-5)
    return model, x


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """name -> .keras file (with its inputs and outputs) of the models this module has checked."""
    return {"folder": tmp_path_factory.mktemp("saved")}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in DEEPER else n for n in FAST])
def test_model_trains_saves_and_converts(name, tmp_path, saved):
    model, x = check_model(name)
    check_config(model)
    saved[name] = saved["folder"] / f"{name}.keras"
    check_keras_file(model, x, saved[name], atol=0)
    check_tflite(model, x, tmp_path / "m.tflite")


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_big_model_forward_backward_and_tflite(name, tmp_path):
    """The big models get the fast tier's checks too: gradients, an identical .keras round trip,
    and a builtins-only float32 .tflite whose outputs match Keras; on one channel (grayscale data),
    so one build covers that as well (the parameter-count tests build them on three)."""
    model, x = check_model(name, size=32, channels=1)
    check_keras_file(model, x, tmp_path / "m.keras", atol=0)
    (tmp_path / "m.keras").unlink()  # the VGGs are 0.5 GB
    check_tflite(model, x, tmp_path / "m.tflite", atol=1e-3)


def test_a_model_of_every_fast_family_loads_in_a_fresh_process(saved):
    """`import kclassify; keras.models.load_model(...)` in a new Python, for one model of each family
    the fast tier builds (one process for all; test_registered.py loads every custom object so)."""
    first = {}
    for name in FAST:
        first.setdefault(MODELS.info(name)["family"], name)
    for name in first.values():
        if name not in saved:  # this test run alone
            model, x = check_model(name)
            saved[name] = saved["folder"] / f"{name}.keras"
            check_keras_file(model, x, saved[name], atol=0)
    check_fresh_process([saved[name] for name in first.values()])


@pytest.mark.parametrize("name", tier(EXACT))
def test_cifar_resnet_parameter_counts_are_exact(name):
    assert trainable(build_model(name, 10, (32, 32, 3))) == EXACT[name]


@pytest.mark.parametrize("name", tier({**REFERENCE, **REFERENCE_10}))
def test_parameter_counts_equal_reference_implementations(name):
    size = 224 if name.startswith("vgg") else 32
    classes = 10 if name in REFERENCE_10 else 1000
    assert trainable(build_model(name, classes, (size, size, 3))) == {**REFERENCE, **REFERENCE_10}[name]


@pytest.mark.parametrize("name", tier(PAPER))
def test_parameter_counts_match_papers(name):
    figure, classes, tolerance, with_bn = PAPER[name]
    count = trainable(build_model(name, classes, (32, 32, 3)), with_bn)
    assert abs(count - figure) / figure < tolerance, count


@pytest.mark.parametrize("name", sorted(PAPER_100))
def test_wide_resnet_parameter_counts_match_paper(name):
    count = trainable(build_model(name, 100, (32, 32, 3)))
    assert abs(count - PAPER_100[name]) / PAPER_100[name] < 0.01, count


def test_layers_are_named_by_stage():
    names = [layer.name for layer in build_model("resnet20", 10, (32, 32, 3)).layers]
    assert names[:2] == ["pixels", "normalize"] and "stem_conv" in names
    assert any(n.startswith("stage3_block3") for n in names) and names[-1] == "predictions"


def test_unknown_model_param_is_named():
    from kclassify.errors import RecipeError

    with pytest.raises(RecipeError, match="no parameter 'width_mlt'.*did you mean 'width_mult'"):
        build_model("resnet20", 10, (32, 32, 3), width_mlt=2)


def test_normalization_is_inside_the_model():
    model = build_model("resnet20", 10, (8, 8, 3), mean=[100, 110, 120], std=[50, 60, 70])
    norm = model.get_layer("normalize")
    out = norm(np.full((1, 8, 8, 3), [100, 110, 120], dtype="float32")).numpy()
    assert np.abs(out).max() < 1e-5


# Family options, each exercised once on a small build (the registered sizes are covered above).
def _options():
    from kclassify.models import densenet, mobilenet_v3, preact_resnet, resnext

    # ImageNet ResNets share the post-activation block with ResNeXt-29; their variants and
    # stems are checked by structure below (a trained ResNet-18/50 takes ~10 s here).
    return {
        "resnext_cifar_se_gem_hard_swish": lambda: resnext.resnext_cifar(
            11, 5, (32, 32, 3), cardinality=2, base_width=4, se_ratio=4, activation="hard_swish",
            drop_path_rate=0.1, pooling="gem", zero_gamma=True, dropout=0.1),
        "preact_bottleneck_dropout": lambda: preact_resnet.preact_resnet(
            11, 5, (32, 32, 3), bottleneck=True, se_ratio=4, block_dropout=0.3, drop_path_rate=0.1,
            activation="swish"),
        "densenet_bc_tiny": lambda: densenet.densenet(10, 5, (32, 32, 3), growth_rate=8, cifar_stem=True),
        "mobilenet_v3_small_cifar_half": lambda: mobilenet_v3.mobilenet_v3(
            5, (32, 32, 3), size="small", width_mult=0.5, cifar_stem=True, drop_path_rate=0.1, zero_gamma=True),
    }


@pytest.mark.parametrize("case", sorted(_options()))
def test_family_options_train_and_save(case, tmp_path):
    model = _options()[case]()
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    check_gradients(model, x, 5)
    check_keras_file(model, x, tmp_path / "m.keras")


def test_custom_layers_and_hard_swish_convert_to_builtins(tmp_path):
    """GeM (POW), SE, hard-swish, hard-sigmoid and stochastic depth in one builtins-only file."""
    from kclassify.models import resnext

    model = resnext.resnext_cifar(11, 5, (32, 32, 3), cardinality=2, base_width=4, se_ratio=4,
                                  activation="hard_swish", drop_path_rate=0.2, pooling="gem")
    x = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3)).astype("float32")
    check_tflite(model, x, tmp_path / "m.tflite")


def test_resnet_variants_differ_as_bag_of_tricks_says():
    from kclassify.models import resnet_imagenet

    a = resnet_imagenet.resnet(50, 10, (32, 32, 3), variant="a")
    d = {layer.name for layer in resnet_imagenet.resnet(50, 10, (32, 32, 3), variant="d").layers}
    assert a.get_layer("stage2_block1_1_conv").strides == (2, 2)  # original: stride on the 1x1
    assert {"stem_1_conv", "stem_3_conv", "stage2_block1_short_pool"} <= d
    a_names = {layer.name for layer in a.layers}
    assert "stem_conv" in a_names and "stage2_block1_short_pool" not in a_names
    b = build_model("resnet50", 10, (32, 32, 3))
    assert b.get_layer("stage2_block1_2_conv").strides == (2, 2)  # ResNet-B: stride on the 3x3


def test_cifar_stems_keep_resolution():
    from kclassify.models import mobilenet_v3, resnet_imagenet

    resnet = resnet_imagenet.resnet(18, 10, (32, 32, 3), cifar_stem=True)
    assert resnet.get_layer("stage1_block1_add").output.shape[1] == 32
    assert mobilenet_v3.mobilenet_v3(10, (32, 32, 3), cifar_stem=True).get_layer("stem_conv").output.shape[1] == 32


def test_zero_gamma_and_stochastic_depth():
    from kclassify.models import resnet_imagenet

    model = resnet_imagenet.resnet(18, 10, (32, 32, 3), zero_gamma=True, drop_path_rate=0.3)
    assert not np.any(model.get_layer("stage1_block1_2_bn").gamma.numpy())
    rates = [layer.rate for layer in model.layers if type(layer).__name__ == "StochasticDepth"]
    assert len(rates) == 8 and rates[-1] == pytest.approx(0.3) and rates[0] == pytest.approx(0.3 / 8)


def test_drop_block_hook_applies_to_the_last_two_stages():
    from keras import layers

    from kclassify.models import resnet_imagenet

    seen = []

    def hook(x, name):
        seen.append(name)
        return layers.Identity(name=f"{name}_dropblock")(x)

    resnet_imagenet.resnet(18, 10, (32, 32, 3), drop_block=hook)
    assert seen and all(n.startswith(("stage3", "stage4")) for n in seen) and len(seen) == 8


def test_generic_preact_block_reproduces_wide_resnet():
    from kclassify.models import preact_resnet

    assert trainable(preact_resnet.se_wide_resnet(16, 4, 100, (32, 32, 3), se_ratio=0)) == \
        trainable(build_model("wrn16_4", 100, (32, 32, 3)))
