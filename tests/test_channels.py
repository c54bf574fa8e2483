"""A user's own folder: grayscale data reaches every registered model (a pretrained 3-channel
backbone gets the channel repeated inside the model, so the exported file takes one channel), and
a source with fewer than two classes is refused at load, before any image is read."""
import numpy as np
import pytest

from conftest import tiny_recipe
from harness import check_gradients, check_tflite
from kclassify.errors import DataError
from kclassify.models import MODELS, build_model

GENERIC = [n for n in MODELS.names() if MODELS.info(n).get("generic_tests", True)]
FAST = [n for n in GENERIC if not MODELS.info(n).get("slow")]
# The Keras Applications backbones: one in the fast tier, the rest in the slow one (each builds
# an ImageNet-sized network); keras_kclassify and keras_hub need a file (tested below and in
# test_keras_hub.py, through the same match_channels).
APPLICATIONS = [n for n in MODELS.names() if MODELS.info(n).get("backbone") not in (None, "kclassify", "keras_hub")]


def gray(n=2, size=32):
    return np.random.default_rng(0).uniform(0, 255, (n, size, size, 1)).astype("float32")


# The big generic models train on one channel in test_models.py's slow test (built once there).
@pytest.mark.parametrize("name", FAST)
def test_every_model_trains_on_one_channel(name):
    model = build_model(name, 5, (32, 32, 1))
    assert model.input_shape[-1] == 1
    check_gradients(model, gray(), 5)


@pytest.mark.parametrize("name", [n if n == "keras_mobilenet" else pytest.param(n, marks=pytest.mark.slow)
                                  for n in APPLICATIONS])
def test_a_pretrained_backbone_takes_grayscale_with_the_channel_repeated_inside(name, tmp_path):
    params = {"alpha": 0.25} if "mobilenet" in name else {}
    if name in ("keras_inception_v3", "keras_xception"):
        params["input_size"] = 96  # their smallest input is 75 and 71 pixels: resized in the graph
    model = build_model(name, 5, (32, 32, 1), **params)
    assert model.input_shape[-1] == 1 and model.get_layer("gray_to_rgb") is not None
    check_gradients(model, gray(), 5)
    if name == "keras_mobilenet":
        check_tflite(model, gray(), tmp_path / "m.tflite")  # the file takes the data's one channel


def test_a_backbone_refuses_channels_it_cannot_take_by_name():
    from kclassify.errors import RecipeError

    with pytest.raises(RecipeError, match="keras_mobilenet takes 3-channel images but the data has 2"):
        build_model("keras_mobilenet", 5, (32, 32, 2), alpha=0.25)


def test_finetuning_imagenet_mobilenet_on_grayscale_digits_trains(tmp_path):
    """The case that crashed in the first training step: digits (1 channel), keras_mobilenet, EMA,
    two phases."""
    from kclassify.commands.finetune import finetune

    recipe = tiny_recipe(tmp_path, model={"name": "keras_mobilenet", "params": {"alpha": 0.25, "input_size": 32}},
                         train={"average": {"kind": "ema", "momentum": 0.9}, "warmup_epochs": 0, "batch_size": 64,
                                "steps_per_epoch": 3},
                         finetune={"phases": [{"unfreeze": "head", "epochs": 1}, {"unfreeze": "all", "epochs": 1}]},
                         output={"export": ["int8"], "report": False, "plots": False})
    run = finetune(recipe, echo=lambda *a: None)
    import json

    metrics = json.loads((run / "metrics.json").read_text())
    exported = json.loads((run / "model_int8.json").read_text())
    assert metrics["epochs"] == 2 and 0.0 <= metrics["val"]["top1"] <= 1.0
    assert exported["input"]["shape"] == [None, 8, 8, 1] and exported["builtins_only"]


def test_a_folder_with_one_class_is_refused_before_reading_images(tmp_path):
    from kclassify.data import load_data
    from kclassify.recipe import DataConfig

    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "a.png").write_bytes(b"not an image at all")  # reading it would fail otherwise
    with pytest.raises(DataError, match="at least two classes, found only 'only'"):
        load_data(DataConfig(source="image_folder", path=str(tmp_path), val_fraction=0.2))


def test_an_npz_with_one_class_is_refused(tmp_path):
    from kclassify.data import load_data
    from kclassify.recipe import DataConfig

    path = tmp_path / "one.npz"
    np.savez(path, x=np.zeros((10, 8, 8, 3), np.uint8), y=np.zeros(10, np.int64), class_names=np.array(["a"]))
    with pytest.raises(DataError, match="at least two classes"):
        load_data(DataConfig(source="npz", path=str(path), val_fraction=0.2))
