"""Training tricks checked against hand computations: the distillation loss, SWA's mean,
EMA's decay, BatchNorm recomputation, and a distillation run end to end."""
import json

import numpy as np
import pytest

from conftest import tiny_recipe
from kclassify.recipe import AverageConfig


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_distillation_loss_matches_hand_computation():
    from kclassify.train.distill import DistillationLoss

    rng = np.random.default_rng(0)
    s_logits, t_logits = rng.normal(size=(4, 5)), rng.normal(size=(4, 5)) * 2
    y = np.eye(5)[[0, 2, 4, 1]]
    alpha, T = 0.7, 3.0
    p_t, p_s = softmax(t_logits / T), softmax(s_logits / T)
    kl = (p_t * (np.log(p_t) - np.log(p_s))).sum(-1)
    ce = -(y * np.log(softmax(s_logits))).sum(-1)
    expected = (alpha * T * T * kl + (1 - alpha) * ce).mean()
    pred = np.concatenate([softmax(s_logits), softmax(t_logits)], axis=1).astype("float32")
    got = float(DistillationLoss(5, alpha, T)(y.astype("float32"), pred))
    assert got == pytest.approx(expected, rel=1e-4)


def _dense_model():
    import keras

    inp = keras.Input((3,))
    return keras.Model(inp, keras.layers.Dense(2, name="d")(inp))


def test_swa_of_two_weight_sets_is_their_mean(tmp_path):
    from kclassify.train.averaging import WeightAverage

    model = _dense_model()
    avg = WeightAverage(AverageConfig(kind="swa", start_epoch=0), model)
    first = [np.full(w.shape, 1.0, "float32") for w in model.weights]
    second = [np.full(w.shape, 3.0, "float32") for w in model.weights]
    for epoch, values in enumerate((first, second)):
        for w, v in zip(model.weights, values):
            w.assign(v)
        avg.on_epoch_end(epoch)
    assert avg.apply()
    for w in model.weights:
        np.testing.assert_allclose(w.numpy(), 2.0)
    resumed = WeightAverage(AverageConfig(kind="swa", start_epoch=0), _dense_model())
    resumed.restore(avg.arrays())  # what a checkpoint keeps
    assert resumed.count == 2 and np.allclose(resumed.shadow[0].numpy(), 2.0)


def test_ema_follows_the_decay(tmp_path):
    from kclassify.train.averaging import WeightAverage

    model = _dense_model()
    for w in model.weights:
        w.assign(np.zeros(w.shape, "float32"))
    avg = WeightAverage(AverageConfig(kind="ema", momentum=0.5), model)
    for w in model.weights:
        w.assign(np.ones(w.shape, "float32"))
    avg.on_train_batch_end(0)  # decay min(0.5, 2/11) = 2/11
    np.testing.assert_allclose(avg.shadow[0].numpy(), 1 - 2 / 11, rtol=1e-6)


def test_recompute_bn_sets_plain_average_statistics():
    import keras
    import tensorflow as tf

    from kclassify.train.averaging import recompute_bn

    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.BatchNormalization(name="bn")(inp))
    x = np.random.default_rng(0).normal(3.0, 2.0, (64, 4)).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices((x, x)).batch(16)
    recompute_bn(model, ds, batches=4)
    bn = model.get_layer("bn")
    np.testing.assert_allclose(bn.moving_mean.numpy(), x.mean(0), rtol=1e-4)
    batch_vars = np.mean([x[i:i + 16].var(0) for i in range(0, 64, 16)], axis=0)
    np.testing.assert_allclose(bn.moving_variance.numpy(), batch_vars, rtol=1e-3)
    assert bn.momentum == 0.99


# slow tier (keeps the fast one under 15 minutes on 2 cores); their unit tests above stay fast
@pytest.mark.slow
def test_distillation_and_swa_run_end_to_end(digits_run, tmp_path):
    from kclassify.commands.fit import fit

    recipe = tiny_recipe(tmp_path, train={"epochs": 2, "distill": {"teacher": str(digits_run / "model.keras")},
                                          "average": {"kind": "swa", "start_epoch": 1, "lr": 0.01}})
    run = fit(recipe, echo=lambda *a: None)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["params"] < 100_000  # the student, not student + teacher
    history = json.loads((run / "ckpt" / "state.json").read_text())["history"]
    assert history[1]["lr"] == pytest.approx(0.01)  # SWA's constant rate from its start epoch
    assert list((run / "ckpt").glob("step-*.avg.npz"))


def test_swa_cyclic_rate_and_cycle_end_averaging(tmp_path):
    from kclassify.recipe import TrainConfig
    from kclassify.train.averaging import WeightAverage
    from kclassify.train.schedules import schedule_from

    train = TrainConfig(epochs=8, lr=0.1, average={"kind": "swa", "start_epoch": 2, "lr": 0.05, "min_lr": 0.01,
                                                   "cycle_epochs": 2})
    sched = schedule_from(train, steps_per_epoch=5)  # cycles of 10 steps from step 10
    assert [float(sched(s)) for s in (10, 19, 20, 29)] == pytest.approx([0.05, 0.01, 0.05, 0.01])
    avg = WeightAverage(train.average, _dense_model())
    for epoch in range(8):
        avg.on_epoch_end(epoch)
    assert avg.count == 3  # after epochs 4, 6 and 8


def test_lookahead_resets_the_weights_to_the_shadow_with_a_decay_that_ramps_with_progress():
    from kclassify.train.averaging import WeightAverage

    model = _dense_model()
    for w in model.weights:
        w.assign(np.zeros(w.shape, "float32"))
    progress = {"p": 0.5}
    avg = WeightAverage(AverageConfig(kind="lookahead", every=5, momentum=0.95, power=3.0), model,
                        progress=lambda: progress["p"])
    for step in range(5):
        for w in model.weights:
            w.assign(np.full(w.shape, float(step + 1), "float32"))
        avg.on_train_batch_end(step)
    decay = 0.95 ** 5 * 0.5 ** 3  # only the 5th step updates
    expected = decay * 0.0 + (1 - decay) * 5.0
    for w, shadow in zip(model.weights, avg.shadow):
        np.testing.assert_allclose(shadow.numpy(), expected, rtol=1e-6)
        np.testing.assert_allclose(w.numpy(), expected, rtol=1e-6)  # weights reset to the shadow
    assert avg.count == 1
