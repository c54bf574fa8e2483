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


def test_mix_off_epochs_and_whitening_bias_segments():
    from kclassify.train.engine import segment_at

    recipe = validate({"train": {"epochs": 10, "whiten_bias_epochs": 3}, "augment": {"mixup_alpha": 0.2, "mix_off_epochs": 3}})
    seg = [segment_at(recipe.augment, recipe.train, 4, 40, step) for step in (0, 11, 12, 27, 28, 39)]
    assert seg == [(True, True, False), (True, True, False), (True, False, False), (True, False, False),
                   (False, False, False), (False, False, False)]
    plain = validate({"train": {"epochs": 10}, "augment": {"mix_off_epochs": 3}})
    assert segment_at(plain.augment, plain.train, 4, 40, 39) == (False, True, False)
    assert [segment_at(plain.augment, plain.train, 4, 40, step, 13)[2] for step in (0, 12, 13)] == [True, True, False]


def test_augment_preview_writes_a_grid(tmp_path):
    from kclassify.api import augment_preview
    from kclassify.augment.preview import label_text

    recipe = tiny_recipe(tmp_path, augment={"mixup_alpha": 0.4, "crop_pad": 1})
    augment_preview(recipe, tmp_path / "grid.png", count=16, echo=lambda *a: None)
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


def test_device_preparation_computes_what_the_host_stream_computes(tmp_path):
    """runtime.augment_on device: the raw stream + recipe_preparer (run in the step) give the host
    stream's batches: the same images, alternating flips, smoothed targets and class weights."""
    from kclassify.data import load_data
    from kclassify.data.pipeline import recipe_preparer, recipe_train_dataset

    recipe = tiny_recipe(tmp_path, augment={"flip": "alternate"},
                         train={"label_smoothing": 0.1, "class_balance": "loss", "batch_size": 32})
    train = load_data(recipe.data).train
    host = recipe_train_dataset(recipe, train, 10, start_step=5).take(12)
    raw = recipe_train_dataset(recipe, train, 10, start_step=5, raw=True).take(12)
    prepare = recipe_preparer(recipe, train, 10)
    for step, (h, r) in enumerate(zip(host, raw)):
        assert r[0].dtype.name == "uint8" and len(r) == 3  # images, labels, flip mask
        d = prepare(r)
        assert len(d) == len(h) == 3
        for a, b in zip(h, d):
            np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=f"step {step}")
    assert any(r[2].numpy().any() for r in raw)  # some images were mirrored


def test_device_preparation_mixes_in_the_step(tmp_path):
    import tensorflow as tf

    from kclassify.data import load_data
    from kclassify.data.pipeline import recipe_preparer, recipe_train_dataset

    recipe = tiny_recipe(tmp_path, augment={"crop_pad": 1, "mixup_alpha": 1.0}, train={"batch_size": 32})
    train = load_data(recipe.data).train
    raw = next(iter(recipe_train_dataset(recipe, train, 10, raw=True)))
    x, y = tf.function(recipe_preparer(recipe, train, 10))(raw)  # as the compiled step runs it
    assert x.dtype == tf.float32 and x.shape == (32, 8, 8, 1) and np.allclose(y.numpy().sum(1), 1, atol=1e-5)
    assert (y.numpy().max(1) < 1).any()  # mixed
    _, plain = recipe_preparer(recipe, train, 10, mix=False)(raw)
    np.testing.assert_array_equal(plain.numpy(), tf.one_hot(raw[1], 10).numpy())


def test_tta_views_average_as_weighted():
    import keras

    from kclassify.tta import TTAViews, preset_views, tta_model

    views = preset_views("mirror_translate", 1)
    assert sum(w for *_, w in views) == pytest.approx(1.0) and len(views) == 6
    images = np.random.default_rng(0).integers(0, 255, (3, 6, 6, 1)).astype("float32")
    stacked = TTAViews([v[:3] for v in views])(images).numpy().reshape(6, 3, 6, 6, 1)
    np.testing.assert_array_equal(stacked[1], images[:, :, ::-1])  # the mirror
    np.testing.assert_array_equal(stacked[4][:, :-1, :-1], images[:, 1:, 1:])  # shifted by (+1, +1)
    np.testing.assert_array_equal(stacked[2][:, 1:, 1:], images[:, :-1, :-1])  # shifted by (-1, -1)
    inp = keras.Input((6, 6, 1))
    model = keras.Model(inp, keras.layers.Dense(4, activation="softmax")(keras.layers.Flatten()(inp)))
    per_view = np.stack([model.predict(stacked[i], verbose=0) for i in range(6)])
    weights = np.array([w for *_, w in views])[:, None, None]
    logits = np.log(np.clip(per_view, 1e-7, 1.0))  # the layer's clip: log(0) would be -inf
    expected = np.exp((weights * logits).sum(0))
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(tta_model(model, views).predict(images, verbose=0), expected, rtol=1e-4, atol=1e-7)
    probs = tta_model(model, views, "probs").predict(images, verbose=0)
    np.testing.assert_allclose(probs, (weights * per_view).sum(0), rtol=1e-5)


def test_evaluation_batch_fits_the_image_size_and_views_unless_the_recipe_sets_it():
    """Evaluation at 224x224 with the old fixed 256 held 7.0 GB at its peak (data_stream.py);
    the default batch shrinks with pixels and test-time views, a recipe's batch_size wins."""
    from kclassify.data.batching import eval_batch_size, eval_batches
    from kclassify.data.sources import Split

    assert eval_batch_size((32, 32, 3)) == eval_batch_size((64, 64, 3)) == 256
    assert eval_batch_size((128, 128, 3)) == 64 and eval_batch_size((224, 224, 3)) == 16
    assert eval_batch_size((32, 32, 3), views=6) == 128 and eval_batch_size((224, 224, 3), views=10) == 4
    assert eval_batch_size((224, 224, 3), requested=100) == 100
    split = Split(np.zeros((40, 224, 224, 3), np.uint8), np.zeros(40, np.int32))
    assert [len(x) for x in eval_batches(split)] == [16, 16, 8]
    assert [len(x) for x in eval_batches(split, 30)] == [30, 10]
    assert validate({"evaluate": {"batch_size": None}}).evaluate.batch_size is None
