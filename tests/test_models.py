"""Registry-driven model tests: every registered model is built, run forward and backward,
round-tripped through .keras and converted to builtins-only TFLite; no per-model test code."""
import numpy as np
import pytest

from kclassify.models import MODELS, build_model

FAST = [n for n in MODELS.names() if not MODELS.info(n).get("slow")]
SLOW = [n for n in MODELS.names() if MODELS.info(n).get("slow")]

# Trainable parameters at 10 classes, 32x32x3 (BN moving statistics are not trainable and
# not counted, as in the papers). CIFAR ResNets: exact counts of the option-A reference
# implementation; WRNs (100 classes): the paper's 36.5M / 11.0M / 8.9M, within 1%.
EXACT = {"resnet20": 269_722, "resnet32": 464_154, "resnet44": 658_586, "resnet56": 853_018,
         "resnet110": 1_727_962, "resnet1202": 19_421_274}
PAPER_100 = {"wrn28_10": 36.5e6, "wrn16_8": 11.0e6, "wrn40_4": 8.9e6}


def trainable(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


def check_model(name, size=32):
    import keras
    import tensorflow as tf

    model = build_model(name, 5, (size, size, 3))
    x = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32")
    with tf.GradientTape() as tape:
        probs = model(x, training=True)
        loss = keras.losses.categorical_crossentropy(np.eye(5)[[0, 3]], probs)
    grads = tape.gradient(loss, model.trainable_variables)
    assert probs.shape == (2, 5) and np.allclose(probs.numpy().sum(1), 1, atol=1e-5)
    missing = [v.path for v, g in zip(model.trainable_variables, grads) if g is None]
    assert not missing, f"no gradient reaches {missing[:3]}"
    assert all(np.isfinite(g.numpy()).all() for g in grads)
    return model, x


@pytest.mark.parametrize("name", FAST)
def test_model_trains_saves_and_converts(name, tmp_path):
    import keras

    from kclassify.export.convert import convert
    from kclassify.litert_runner import TFLiteClassifier

    model, x = check_model(name)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    (tmp_path / "m.tflite").write_bytes(convert(model, "float32"))
    lite = TFLiteClassifier(tmp_path / "m.tflite")
    np.testing.assert_allclose(lite.predict(x.astype(np.uint8)), model.predict(x.astype(np.uint8).astype("float32"), verbose=0), atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_big_model_forward_backward(name):
    check_model(name, size=32)


@pytest.mark.parametrize("name", sorted(EXACT))
def test_cifar_resnet_parameter_counts_are_exact(name):
    if MODELS.info(name).get("slow") and name == "resnet1202":
        pytest.skip("ResNet-1202 build takes long; counted in the slow tier")
    assert trainable(build_model(name, 10, (32, 32, 3))) == EXACT[name]


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

    with pytest.raises(RecipeError, match="no parameter 'widht'.*did you mean 'width'"):
        build_model("resnet20", 10, (32, 32, 3), widht=2)


def test_normalization_is_inside_the_model():
    model = build_model("resnet20", 10, (8, 8, 3), mean=[100, 110, 120], std=[50, 60, 70])
    norm = model.get_layer("normalize")
    out = norm(np.full((1, 8, 8, 3), [100, 110, 120], dtype="float32")).numpy()
    assert np.abs(out).max() < 1e-5
