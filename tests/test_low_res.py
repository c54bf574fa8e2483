"""train.low_res (progressive resizing): the first share of the steps train on smaller images, a
budgeted run plans its steps at their cost, and what cannot work is refused by name."""
import json

import keras
import pytest
import tensorflow as tf

from conftest import FakeClock, tiny_recipe

QUIET = {"echo": lambda *a: None}


def _budget(seconds_per_step):
    from kclassify.train.budget import Budget

    b = Budget(1.0, 0.0, val_images=0, eval_views=0, exports=[], calibration_images=0, clock=lambda: 0.0)
    b.seconds_per_step = seconds_per_step
    return b


def test_the_plan_spends_the_time_left_at_each_steps_cost():
    plain = _budget(0.1)
    total, low = plain.plan(0, 100, 0, 10 ** 6)
    left = plain.deadline - 0.0 - plain.margin - plain.final_seconds()
    assert low == 0 and abs(total * 0.1 - left) < 0.2

    b = _budget(0.1)
    total, low = b.plan(0, 100, 0, 10 ** 6, low_res=(0.5, 0.5))
    assert abs(low - 0.5 * total) <= 1
    spent = low * 0.05 + (total - low) * 0.1  # a low-resolution step costs half
    assert abs(spent - left) < 0.3 and total > 1.3 * 0.95 * (left / 0.1)

    # Past its low-resolution share (a replan after steps ran slower) the plan is a plain one.
    late = _budget(0.1)
    total, low = late.plan(500, 100, 0, 10 ** 6, low_res=(0.5, 0.5))
    assert low == 500 and abs((total - 500) * 0.1 - left) < 0.3
    assert late.plan(0, 100, 0, 50, low_res=(0.5, 0.5)) == (50, 25)  # the epochs cap holds


def test_low_res_shape_and_its_cost():
    from kclassify.errors import RecipeError
    from kclassify.recipe import LowResConfig
    from kclassify.train.engine import low_res_shape

    assert low_res_shape(None, (32, 32, 3)) is None
    assert low_res_shape(LowResConfig(size=24, fraction=0.5), (32, 32, 3)) == (24, 24, 0.5625)
    assert low_res_shape(LowResConfig(size=16, fraction=0.5), (24, 32, 3)) == (12, 16, 0.25)
    with pytest.raises(RecipeError, match="below the images' longer side"):
        low_res_shape(LowResConfig(size=32, fraction=0.5), (32, 32, 3))


def test_a_network_that_needs_its_full_size_is_refused():
    from kclassify.errors import RecipeError
    from kclassify.train.engine import check_any_size

    inp = keras.Input((8, 8, 1))
    flat = keras.Model(inp, keras.layers.Dense(3)(keras.layers.Flatten()(keras.layers.Conv2D(4, 3)(inp))))
    with pytest.raises(RecipeError, match="cannot take 6x6 images"):
        check_any_size(flat, "flat", (6, 6))
    pooled = keras.Model(inp, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inp))))
    check_any_size(pooled, "pooled", (6, 6))
    assert pooled.input_spec[0].shape == (None, 8, 8, 1)  # the check leaves the Input's spec as it was


def _count_resized_steps(monkeypatch):
    """A counter of the train steps that resized their batch (the resize runs in the graph)."""
    from kclassify.train import loop

    resized = tf.Variable(0, dtype=tf.int64)
    real = loop.batch_resizer

    def counting(height, width):
        assert (height, width) == (6, 6)
        resize = real(height, width)

        def step(batch):
            resized.assign_add(1)
            return resize(batch)

        return step

    monkeypatch.setattr(loop, "batch_resizer", counting)
    return resized


def test_the_first_share_of_the_steps_trains_on_smaller_images(tmp_path, monkeypatch):
    """Digits (8x8) with low_res 6 for half the steps: the resize runs in exactly those steps, the
    model trains through the switch and is saved (and loads) at the data's size."""
    from kclassify.commands.fit import fit

    resized = _count_resized_steps(monkeypatch)
    recipe = tiny_recipe(tmp_path, train={"epochs": 4, "low_res": {"size": 6, "fraction": 0.5}})
    run = fit(recipe, **QUIET)
    state = json.loads((run / "ckpt" / "state.json").read_text())
    steps = state["step"]
    assert int(resized.numpy()) == round(0.5 * steps) and steps > 0
    model = keras.models.load_model(run / "model.keras")
    assert model.input_shape[1:3] == (8, 8)
    assert json.loads((run / "metrics.json").read_text())["val"]["top1"] > 0.6


@pytest.mark.slow  # the slow tier (-m slow): keeps the fast tier under 8 minutes on 2 cores
def test_a_budgeted_run_records_where_the_full_size_began(tmp_path, monkeypatch):
    """Replans after the switch keep the step it happened at; the run ends inside its budget."""
    from kclassify.commands.fit import fit

    resized = _count_resized_steps(monkeypatch)
    clock = FakeClock()

    class Steps(keras.callbacks.Callback):  # a full-size step takes 0.25 s on the fake clock, a small one 0.15
        def on_train_batch_end(self, batch, logs=None):
            clock.advance(0.15 if int(self.model.optimizer.iterations.numpy()) <= int(resized.numpy()) else 0.25)

    budget = 0.5  # minutes
    # Epochs of 8 steps (256 images), so that even a slow machine replans several times after the switch.
    recipe = tiny_recipe(tmp_path, data={"limit": 256},
                         train={"epochs": 400, "budget_minutes": budget, "warmup_epochs": 0,
                                "warmup_fraction": 0.1, "batch_size": 32, "low_res": {"size": 6, "fraction": 0.3}})
    t = clock()
    run = fit(recipe, started=t, clock=clock, callbacks=[Steps()], **QUIET)
    assert clock() - t < 60 * budget
    b = json.loads((run / "metrics.json").read_text())["budget"]
    history = json.loads((run / "ckpt" / "state.json").read_text())["history"]
    after = [h for h in history if h["step"] > b["low_res_steps"]]
    assert b["replans"] >= 3 and len(after) >= 2, (b, len(history))
    assert int(resized.numpy()) == b["low_res_steps"]
    # Where it switched is the plan of that moment (early plans of so short a run are rough); it stays.
    assert 0 < b["low_res_steps"] < b["planned_steps"], b


@pytest.mark.parametrize("fields,match", [
    ({"train": {"low_res": {"size": 6, "fraction": 1.0}}}, "fraction"),
    ({"train": {"low_res": {"size": 6, "fraction": 0.5, "sise": 4}}}, "sise"),
])
def test_recipe_typos_in_low_res_fail_at_load(fields, match):
    from kclassify.errors import RecipeError
    from kclassify.recipe import validate

    with pytest.raises((RecipeError, ValueError), match=match):
        validate(fields)


def test_low_res_is_refused_where_it_cannot_hold(tmp_path):
    from kclassify.errors import RecipeError
    from kclassify.commands.checks import check_finetune_recipe
    from kclassify.commands.checks import check_fit_recipe
    from kclassify.commands.fit import fit

    low = {"low_res": {"size": 6, "fraction": 0.5}}
    with pytest.raises(RecipeError, match="teacher"):
        check_fit_recipe(tiny_recipe(tmp_path, train={**low, "distill": {"teacher": str(tmp_path / "t.keras")}}))
    with pytest.raises(RecipeError, match="train.low_res is read by kclassify fit"):
        check_finetune_recipe(tiny_recipe(tmp_path, model={"name": "keras_mobilenet", "params": {}},
                                          train={**low, "warmup_epochs": 0}))
    with pytest.raises(RecipeError, match="longer side"):
        fit(tiny_recipe(tmp_path, train={"low_res": {"size": 8, "fraction": 0.5}}), **QUIET)
    assert not (tmp_path / "run" / "model.keras").exists()


@pytest.mark.slow  # the slow tier (-m slow): keeps the fast tier under 8 minutes on 2 cores
def test_low_res_with_the_data_filter_resizes_for_the_proxy_too(tmp_path, tiny_npz):
    """The proxy ranks the batch the model trains on: both take the 24x24 images of the early steps."""
    from kclassify.commands.fit import fit

    proxy = {"name": "airbench93", "params": {"widths": [8, 8, 8], "act": "relu"}, "init": "dirac"}
    recipe = tiny_recipe(tmp_path, data={"source": "npz", "path": str(tiny_npz), "val_fraction": 0.2},
                         model={"name": "airbench93", "params": {"widths": [16, 16, 16], "act": "relu"}},
                         train={"epochs": 16, "batch_size": 24, "lr": 0.1, "warmup_epochs": 0,
                                "low_res": {"size": 24, "fraction": 0.5},
                                "data_filter": {"proxy": proxy, "keep": 0.5, "proxy_every": 2}})
    lines = []
    run = fit(recipe, echo=lines.append)
    assert any("low_res: step" in str(line) for line in lines), lines
    assert json.loads((run / "metrics.json").read_text())["val"]["top1"] > 0.6  # 3 colour classes
