"""Every Keras object kclassify registers (layers, optimizers, schedules, the distillation loss)
goes through a .keras file and back in a fresh process after `import kclassify`: one case per
object, each listing what it covers, and the cases must cover the whole registry."""
import keras
import numpy as np
import pytest

from harness import check_fresh_process, check_gradients, check_keras_file, check_tflite
from kclassify.recipe import TrainConfig


def _head(inputs, x, k=3):
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(k, activation="softmax")(x))


def _layer_model(layer_fn, shape=(8, 8, 3), k=3):
    inputs = keras.Input(shape)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    return _head(inputs, layer_fn(x), k)


def _dropblock():
    from kclassify.layers.dropblock import DropBlock2D
    return _layer_model(lambda x: DropBlock2D(keep_prob=0.8, block_size=3)(x))


def _gem():
    from kclassify.layers.gem_pooling import GeMPooling2D

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(GeMPooling2D()(x)))


def _pad_shortcut():
    from kclassify.layers.pad_shortcut import PadShortcut
    return _layer_model(lambda x: PadShortcut(filters=8, stride=2)(x))


def _stochastic_depth():
    from kclassify.layers.stochastic_depth import StochasticDepth
    return _layer_model(lambda x: keras.layers.Add()([x, StochasticDepth(0.2)(x)]))


def _whitening():
    from kclassify.layers.whitening import PatchWhitening

    inputs = keras.Input((8, 8, 3))
    return _head(inputs, PatchWhitening(kernel_size=2, channels=3)(inputs))


def _tta():
    from kclassify.recipe import EvaluateConfig
    from kclassify.tta import tta_model, views_of

    cfg = EvaluateConfig(tta="mirror_translate")
    return tta_model(_layer_model(lambda x: x), views_of(cfg), cfg.average)


def _compiled(optimizer, multipliers=False, loss=None, k=3):
    """A small conv model compiled with the recipe's optimizer (and its schedule), one step taken
    so the optimizer's variables exist in the file."""
    from kclassify.train.optim import make_optimizer

    model = _layer_model(lambda x: keras.layers.Conv2D(4, 3, padding="same")(x), k=k)
    train = TrainConfig(optimizer=optimizer, epochs=2, lr=0.05, warmup_epochs=0.5)
    pairs = [(model.trainable_variables[-1], 2.0)] if multipliers else []
    opt = make_optimizer(train, 4, model, pairs)
    model.compile(optimizer=opt, loss=loss or "categorical_crossentropy")
    opt.build(model.trainable_variables)  # as the engine does after compile
    x = np.random.default_rng(0).uniform(0, 255, (4, 8, 8, 3)).astype("float32")
    model.fit(x, np.eye(3)[[0, 1, 2, 0]], epochs=1, verbose=0)
    return model


def _distillation_loss():
    from kclassify.train.distill import DistillationLoss
    return _compiled("sgd", loss=DistillationLoss(3), k=6)  # [student | teacher] side by side


# case -> (builder, registered names it covers, whether a float32 .tflite is expected too)
CASES = {
    "dropblock": (_dropblock, {"DropBlock2D"}, True),
    "gem": (_gem, {"GeMPooling2D"}, True),
    "pad_shortcut": (_pad_shortcut, {"PadShortcut"}, True),
    "stochastic_depth": (_stochastic_depth, {"StochasticDepth"}, True),
    "whitening": (_whitening, {"PatchWhitening"}, True),
    "tta": (_tta, {"TTAViews", "TTAAverage"}, True),
    "sgd_multipliers": (lambda: _compiled("sgd", multipliers=True), {"GroupSGD", "WarmupSchedule", "ScaledSchedule"}, False),
    "adamw_multipliers": (lambda: _compiled("adamw", multipliers=True), {"GroupAdamW"}, False),
    "muon": (lambda: _compiled("muon"), {"MuonSGD", "ConvMuon"}, False),
    "distillation_loss": (_distillation_loss, {"DistillationLoss"}, False),
}


def test_the_cases_cover_every_registered_object():
    import kclassify  # noqa: F401  (registers the package's objects)

    registered = {k.split(">", 1)[1] for k in keras.saving.get_custom_objects() if k.startswith("kclassify>")}
    covered = set().union(*(names for _, names, _ in CASES.values()))
    assert registered <= covered, f"registered objects without a round-trip case: {sorted(registered - covered)}"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """case -> .keras file (with its inputs and outputs), each case built and checked once."""
    folder, files = tmp_path_factory.mktemp("registered"), {}
    for case, (build, _, tflite) in sorted(CASES.items()):
        model = build()
        x = np.random.default_rng(1).uniform(0, 255, (2, *model.input_shape[1:])).astype("float32")
        if tflite:
            check_tflite(model, x, folder / f"{case}.tflite")
        else:
            check_gradients(model, x, model.output_shape[-1])
        files[case] = folder / f"{case}.keras"
        check_keras_file(model, x, files[case])
    return files


def test_every_registered_object_round_trips_in_a_fresh_process(saved):
    found = check_fresh_process([saved[case] for case in sorted(CASES)])
    kinds = {p.split("/")[-1][:-6]: (opt, loss) for p, (_, opt, loss) in found.items()}
    assert kinds["muon"][0] == "MuonSGD" and kinds["sgd_multipliers"][0] == "GroupSGD"
    assert kinds["adamw_multipliers"][0] == "GroupAdamW" and kinds["distillation_loss"][1] == "DistillationLoss"
