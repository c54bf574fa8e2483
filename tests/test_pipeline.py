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


def test_class_balanced_sampling_evens_out_classes():
    from kclassify.data.pipeline import train_dataset
    from kclassify.data.sources import Split

    labels = np.repeat([0, 1, 2], [300, 60, 20]).astype(np.int32)  # 15:3:1 unbalanced
    split = Split(np.zeros((380, 2, 2, 1), np.uint8), labels)
    counts = np.zeros(3)
    for _ in range(5):  # 5 epochs of 380 images
        for _, y in train_dataset(split, 3, 38, balance="sampling"):
            counts += y.numpy().sum(0)
    share = counts / counts.sum()
    assert np.abs(share - 1 / 3).max() < 0.04  # binomial sd of a share over 1,900 draws is about 0.011


def test_effective_number_weights():
    from kclassify.data.pipeline import effective_number_weights

    w = effective_number_weights(np.repeat([0, 1], [1000, 10]), 3, beta=0.99)
    expect = np.array([(1 - 0.99) / (1 - 0.99 ** 1000), (1 - 0.99) / (1 - 0.99 ** 10)])
    np.testing.assert_allclose(w[:2], expect * 2 / expect.sum(), rtol=1e-5)
    assert w[2] == 0 and w[1] > w[0]


def test_class_weighted_pipeline_yields_sample_weights(tmp_path):
    from kclassify.data import load_data
    from kclassify.data.pipeline import recipe_train_dataset

    recipe = tiny_recipe(tmp_path, train={"class_balance": "loss"})
    x, y, w = next(iter(recipe_train_dataset(recipe, load_data(recipe.data).train, 10)))
    assert w.shape == (64,) and np.all(w.numpy() > 0)


def test_tta_views():
    from kclassify.evaluate import tta_views

    images = np.arange(2 * 6 * 6 * 1, dtype=np.uint8).reshape(2, 6, 6, 1)
    flip = tta_views(images, "flip")
    assert len(flip) == 2 and np.array_equal(flip[1][:, :, 0], images[:, :, -1])
    crops = tta_views(images, "crops", pad=1)
    assert len(crops) == 10 and all(v.shape == images.shape for v in crops)
    assert np.array_equal(crops[4][:, :-1, :-1], images[:, 1:, 1:])  # corner crop: shifted by pad
