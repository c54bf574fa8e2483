"""train.data_filter (airbench96_faster's data filtering): a proxy network ranks each drawn batch by
its loss, the model trains on the hardest share, the proxy learns every Nth step, and its state
travels with the checkpoints."""
import json

import numpy as np
import pytest
import tensorflow as tf

from kclassify.errors import RecipeError
from kclassify.recipe import DataFilterConfig, ModelConfig, TrainConfig, validate

TINY_PROXY = {"name": "airbench93", "params": {"widths": [8, 8, 8], "act": "relu"}, "init": "dirac"}


def _filter(keep=0.5, every=2, batch=16):
    import keras

    from kclassify.models import build_model

    keras.mixed_precision.set_global_policy("float32")  # a bf16 policy left by an earlier fit would blur the ranking
    from kclassify.train.data_filter import DataFilter
    from kclassify.train.setup import fit_setup

    cfg = DataFilterConfig(proxy=ModelConfig(**TINY_PROXY), keep=keep, proxy_every=every)
    proxy = build_model("airbench93", 3, (32, 32, 3), widths=(8, 8, 8), act="relu")
    flt = DataFilter(cfg, proxy, batch)
    iterations = tf.Variable(0, dtype=tf.int64)
    train = TrainConfig(lr=0.5, momentum=0.9)
    flt.compile(train, lambda m: fit_setup(m, train), 10, lambda step: 0.5, iterations, 100)
    return flt, iterations


def _batch(n=16, seed=0):
    rng = np.random.default_rng(seed)
    x = tf.constant(rng.integers(0, 256, (n, 32, 32, 3)).astype(np.float32))
    y = tf.one_hot(rng.integers(0, 3, n), 3)
    return x, y, tf.range(n, dtype=tf.float32)  # the sample weight of image i is i: it names the image


def test_the_model_trains_on_the_hardest_share_and_the_proxy_learns_every_nth_step():
    flt, iterations = _filter(keep=0.25, every=2)
    seen = []
    step = tf.function(flt.wrap(lambda data: {"ids": data[2], "pixels": tf.reduce_mean(data[0], axis=[1, 2, 3])}))
    for it in range(4):
        x, y, ids = _batch(seed=it)
        expected = np.argsort(-flt._losses(x, y).numpy())[:4]  # batch statistics: the same on a second call
        before = [w.numpy().copy() for w in flt.proxy.trainable_variables]
        iterations.assign(it)
        out = step((x, y, ids))
        got = out["ids"].numpy().astype(int)
        assert sorted(got) == sorted(expected.tolist())  # the 4 of 16 with the largest proxy loss
        np.testing.assert_allclose(out["pixels"].numpy(), tf.reduce_mean(tf.gather(x, got), axis=[1, 2, 3]).numpy())
        moved = any(not np.array_equal(b, w.numpy()) for b, w in zip(before, flt.proxy.trainable_variables))
        seen.append(moved)
    assert seen == [True, False, True, False]  # it learns at steps 0 and 2 of every 2


def test_the_proxy_state_round_trips_through_checkpoint_arrays():
    flt, iterations = _filter()
    step = tf.function(flt.wrap(lambda data: {"n": tf.shape(data[0])[0]}))
    for it in range(3):
        iterations.assign(2 * it)
        assert int(step(_batch(seed=it))["n"]) == 8
    arrays = flt.arrays()
    fresh, _ = _filter()
    assert not all(np.array_equal(a, b.numpy()) for a, b in zip(
        [arrays[f"proxy_w{i}"] for i in range(len(fresh.proxy.weights))], fresh.proxy.weights))
    assert fresh.restore(arrays)
    for a, b in zip(flt.proxy.weights + flt.optimizer.variables, fresh.proxy.weights + fresh.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not fresh.restore({"w0": np.zeros(1)})  # an averages file written without a filter


@pytest.mark.parametrize("augment_on", ["host", pytest.param("device", marks=pytest.mark.slow)])  # device: the filter ranks batches prepared in the step
def test_a_filtered_fit_learns_saves_only_the_model_and_checkpoints_the_proxy(tmp_path, tiny_npz, augment_on):
    import keras

    from conftest import tiny_recipe
    from kclassify.train.averaging import load_arrays
    from kclassify.commands.fit import fit

    recipe = tiny_recipe(tmp_path, data={"source": "npz", "path": str(tiny_npz), "val_fraction": 0.2},
                         model={"name": "airbench93", "params": {"widths": [16, 16, 16], "act": "relu"}},
                         train={"epochs": 16, "batch_size": 24, "lr": 0.1, "warmup_epochs": 0,
                                "data_filter": {"proxy": TINY_PROXY, "keep": 0.5, "proxy_every": 2}},
                         augment={"crop_pad": 2, "flip": "alternate"}, runtime={"augment_on": augment_on})
    lines = []
    run = fit(recipe, echo=lines.append)
    assert any("trains on the 12 hardest of every 24 images" in str(line) for line in lines), lines
    metrics = json.loads((run / "metrics.json").read_text())
    # 3 colour classes; chance is 0.33 (6 epochs, 18 steps, sat on the edge: one run in two read chance)
    assert metrics["val"]["top1"] > 0.6, metrics["val"]
    from kclassify.models import build_model

    model = keras.models.load_model(run / "model.keras")
    assert model.count_params() == build_model("airbench93", 3, (32, 32, 3), widths=(16, 16, 16)).count_params()
    state = json.loads((run / "ckpt" / "state.json").read_text())
    arrays = load_arrays(run / "ckpt" / state["checkpoints"][-1]["averages"])
    assert any(k.startswith("proxy_w") for k in arrays) and any(k.startswith("proxy_o") for k in arrays)


def test_recipe_checks_of_the_data_filter():
    base = {"data": {"source": "digits"}, "train": {"data_filter": {"proxy": TINY_PROXY}}}
    validate(base)
    with pytest.raises(RecipeError, match="train.data_filter.proxy.params: model 'airbench93' has no parameter "
                                          "'widht' \\(did you mean 'widths'\\?\\)"):
        validate({**base, "train": {"data_filter": {"proxy": {"name": "airbench93", "params": {"widht": 8}}}}})
    with pytest.raises(RecipeError, match="unknown key 'kep' in section 'train.data_filter' \\(did you mean 'keep'"):
        validate({**base, "train": {"data_filter": {"kep": 0.5}}})
    with pytest.raises(RecipeError, match="train.data_filter.keep"):
        validate({**base, "train": {"data_filter": {"keep": 1.0}}})
    from kclassify.commands.checks import check_finetune_recipe
    from kclassify.commands.checks import check_fit_recipe

    with pytest.raises(RecipeError, match="train.data_filter is read by kclassify fit"):
        check_finetune_recipe(validate({**base, "model": {"name": "keras_mobilenet"}}))
    with pytest.raises(RecipeError, match="not with runtime.strategy mirrored"):
        check_fit_recipe(validate({**base, "runtime": {"strategy": "mirrored"}}))


def test_the_linear_scaling_rule_and_qat_count_the_kept_images_not_the_drawn_batch():
    filtered = TrainConfig(batch_size=1024, lr=0.1, lr_reference_batch=512, data_filter={"keep": 0.25})
    assert filtered.trained_batch() == 256 and filtered.trained_batch(100) == 25
    assert filtered.effective_lr() == pytest.approx(0.05)  # 256 / 512, not 1024 / 512
    plain = TrainConfig(batch_size=1024, lr=0.1, lr_reference_batch=512)
    assert plain.trained_batch() == 1024 and plain.effective_lr() == pytest.approx(0.2)
