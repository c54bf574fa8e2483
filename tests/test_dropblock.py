"""DropBlock2D and its keep_prob schedule: statistics of the mask, inference, saving."""
import keras
import numpy as np
import pytest
import tensorflow as tf

import kclassify  # noqa: F401  (registers the custom layers for loading)
from kclassify.layers.dropblock import DropBlock2D
from kclassify.train.dropblock_schedule import DropBlockSchedule


def dropped(keep_prob, block_size, shape=(16, 32, 32, 16), seed=1):
    layer = DropBlock2D(keep_prob, block_size, seed=seed)
    out = np.asarray(layer(np.ones(shape, "float32"), training=True))
    return out == 0, out


def expected_drop_rate(keep_prob, size, h, w):
    """Algorithm 1 exactly: a unit is kept when none of the n valid seeds whose block covers it
    fires, each with probability gamma: mean over units of 1 - (1 - gamma)^n."""
    gamma = (1 - keep_prob) / size**2 * h * w / ((h - size + 1) * (w - size + 1))
    valid = np.zeros((h, w))
    valid[size // 2:h - (size - 1) // 2, size // 2:w - (size - 1) // 2] = 1
    padded = np.pad(valid, size // 2)
    n = sum(padded[i:i + h, j:j + w] for i in range(size) for j in range(size))
    return float(np.mean(1 - (1 - gamma) ** n))


@pytest.mark.parametrize("keep_prob", [0.9, 0.75])
def test_drops_about_one_minus_keep_prob(keep_prob):
    mask, _ = dropped(keep_prob, 5)
    # 262k units in about 4k independent blocks: the rate's sampling sd is about 0.005.
    assert abs(mask.mean() - expected_drop_rate(keep_prob, 5, 32, 32)) < 0.015
    # The paper's gamma ignores overlapping blocks and thinner cover at the borders, so the
    # rate is near 1 - keep_prob, not on it (0.092 for 0.9, 0.22 for 0.75).
    assert abs(mask.mean() / (1 - keep_prob) - 1) < 0.15


def test_drops_whole_blocks():
    # A union of 5x5 squares is unchanged by a morphological opening with a 5x5 square: erode
    # (windows fully dropped), then dilate back. Scattered single units would vanish.
    mask, _ = dropped(0.9, 5)
    m = tf.constant(np.moveaxis(mask, 3, 1).reshape(-1, 32, 32, 1), tf.float32)
    eroded = -tf.nn.max_pool2d(-m, 5, 1, "VALID")
    opened = tf.nn.max_pool2d(tf.pad(eroded, [[0, 0], [4, 4], [4, 4], [0, 0]]), 5, 1, "VALID")
    np.testing.assert_array_equal(opened.numpy(), m.numpy())


def test_keeps_the_mean_and_is_identity_at_inference():
    x = np.random.default_rng(0).uniform(0, 2, (8, 16, 16, 8)).astype("float32")
    layer = DropBlock2D(0.8, 3, seed=2)
    out = np.asarray(layer(x, training=True))
    assert abs(out.mean() / x.mean() - 1) < 0.02  # renormalized by the kept fraction; 33k units
    np.testing.assert_array_equal(np.asarray(layer(x, training=False)), x)
    _, ones_out = dropped(0.8, 3)
    assert abs(ones_out.mean() - 1) < 1e-5  # on a constant input the mean is kept exactly


def test_block_larger_than_the_map_and_keep_prob_one():
    mask, _ = dropped(0.9, 7, shape=(64, 4, 4, 8))
    assert 0 < mask.mean() < 0.3
    mask, out = dropped(1.0, 5)
    assert not mask.any()


def small_model():
    inputs = keras.Input((8, 8, 4))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = DropBlock2D(0.7, 3, seed=0, name="db")(x)
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs)


def test_saved_and_loaded(tmp_path):
    model = small_model()
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    layer = loaded.get_layer("db")
    assert isinstance(layer, DropBlock2D) and layer.keep_prob == 0.7 and layer.block_size == 3
    x = np.ones((2, 8, 8, 4), "float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)


class Recorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seen = []

    def on_train_batch_begin(self, batch, logs=None):
        self.seen.append(float(self.model.get_layer("db").current_keep_prob.numpy()))


@pytest.mark.parametrize("by", ["step", "epoch"])
def test_schedule_moves_keep_prob_linearly(by):
    model = small_model()
    model.compile("sgd", "mse")
    rec = Recorder()
    x, y = np.ones((16, 8, 8, 4), "float32"), np.zeros((16, 2), "float32")
    model.fit(x, y, batch_size=4, epochs=3, verbose=0, callbacks=[DropBlockSchedule(by=by), rec])
    seen = np.array(rec.seen)  # 3 epochs x 4 steps
    assert seen[0] == pytest.approx(1.0) and seen[-1] == pytest.approx(0.7)
    expected = 1 - 0.3 * (np.arange(12) / 11 if by == "step" else np.repeat([0, 0.5, 1], 4))
    np.testing.assert_allclose(seen, expected, atol=1e-6)
