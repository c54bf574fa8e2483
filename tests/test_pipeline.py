"""The recipe-driven training pipeline: label smoothing (both formulas), registered ops on
batches, MixUp/CutMix switched off for the last epochs, and the augmentation preview."""
import numpy as np
import pytest

from conftest import tiny_recipe
from kclassify.errors import RecipeError
from kclassify.recipe import validate


@pytest.mark.parametrize("mode,off_value", [("uniform", 0.1 / 10), ("others", 0.1 / 9)])
def test_label_smoothing_targets_sum_to_one(mode, off_value):
    import tensorflow as tf

    from kclassify.data.pipeline import smoother

    y = tf.one_hot([3, 7], 10)
    s = smoother(0.1, mode)(y).numpy()
    np.testing.assert_allclose(s.sum(1), 1.0, rtol=1e-6)
    assert s[0, 0] == pytest.approx(off_value) and s[0, 3] == pytest.approx(1 - 0.1 + (0.01 if mode == "uniform" else 0))


def test_recipe_pipeline_applies_ops_smoothing_and_mixing(tmp_path):
    from kclassify.data import load_data
    from kclassify.data.pipeline import recipe_train_dataset

    recipe = tiny_recipe(tmp_path, augment={"ops": [{"name": "cutout", "length": 4}], "cutmix_alpha": 1.0},
                         train={"label_smoothing": 0.1, "batch_size": 32})
    data = load_data(recipe.data)
    x, y = next(iter(recipe_train_dataset(recipe, data.train, 10)))
    y = y.numpy()
    assert x.shape == (32, 8, 8, 1) and np.allclose(y.sum(1), 1, atol=1e-5)
    assert (y.max(1) < 0.95).all()  # smoothed (and mostly mixed)
    _, y_plain = next(iter(recipe_train_dataset(recipe, data.train, 10, mix=False)))
    assert np.allclose(np.sort(y_plain.numpy(), 1)[:, -1], 0.91)  # smoothing only: 1 - 0.1 + 0.1/10


def test_ops_need_a_name():
    with pytest.raises(RecipeError, match="augment.ops\\[0\\] needs a name"):
        validate({"augment": {"ops": [{"length": 16}]}})


def test_mix_off_epochs_split_training():
    from kclassify.train.fit import _segments

    recipe = validate({"train": {"epochs": 10}, "augment": {"mixup_alpha": 0.2, "mix_off_epochs": 3}})
    assert _segments(recipe) == [(0, 7, True), (7, 10, False)]
    assert _segments(validate({"train": {"epochs": 10}, "augment": {"mix_off_epochs": 3}})) == [(0, 10, True)]


def test_augment_preview_writes_a_grid(tmp_path):
    from kclassify.augment.preview import label_text, preview

    recipe = tiny_recipe(tmp_path, augment={"mixup_alpha": 0.4, "crop_pad": 1})
    preview(recipe, tmp_path / "grid.png", count=16, echo=lambda *a: None)
    assert (tmp_path / "grid.png").stat().st_size > 5000
    assert label_text(np.array([0.0, 1.0]), ["a", "b"]) == "b"
    assert label_text(np.array([0.7, 0.3]), ["a", "b"]) == "a 0.70 / b 0.30"
