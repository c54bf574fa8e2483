"""runtime.conv_filter_grad: a routed Conv2D's filter gradient as per-tap matrix products equals
TensorFlow's own, only eligible layers are routed, and the route ends with training."""
import json

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from conftest import tiny_recipe  # noqa: E402
from kclassify.layers.conv_grad import choose, eligible, filter_gradients, routed_conv  # noqa: E402


def _grads(conv, x, kernel):
    with tf.GradientTape() as tape:
        tape.watch([x, kernel])
        y = conv(x, kernel)
        loss = tf.reduce_sum(y * tf.sin(y))
    return (y, *tape.gradient(loss, [x, kernel]))


@pytest.mark.parametrize("shape, k, co", [((4, 7, 7, 6), 3, 5), ((3, 9, 5, 4), 5, 8), ((2, 3, 3, 16), 3, 16),
                                          ((2, 6, 6, 3), 1, 4)])
def test_matmul_filter_gradient_is_tensorflows(shape, k, co):
    """Odd kernels, non-square maps, a map no larger than the kernel: output, input gradient and
    filter gradient equal TensorFlow's conv2d and its own gradient."""
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=shape).astype(np.float32))
    kernel = tf.constant(rng.normal(size=(k, k, shape[-1], co)).astype(np.float32))
    native = _grads(lambda a, b: tf.nn.conv2d(a, b, 1, "SAME"), x, kernel)
    routed = _grads(routed_conv, x, kernel)
    for got, want in zip(routed, native):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-4)


def test_matmul_filter_gradient_in_bfloat16_stays_close():
    rng = np.random.default_rng(1)
    x = tf.cast(rng.normal(size=(8, 7, 7, 32)), tf.bfloat16)
    kernel = tf.cast(rng.normal(size=(3, 3, 32, 24)) * 0.1, tf.bfloat16)
    native = _grads(lambda a, b: tf.nn.conv2d(a, b, 1, "SAME"), x, kernel)[2]
    routed = _grads(routed_conv, x, kernel)[2]
    native, routed = (tf.cast(g, tf.float32).numpy() for g in (native, routed))
    assert routed.dtype == native.dtype
    assert np.linalg.norm(routed - native) / np.linalg.norm(native) < 0.02


def _model(dtype=None):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="same3", dtype=dtype)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="valid", name="valid")(x)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="strided")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", dilation_rate=2, name="dilated")(x)
    x = keras.layers.Conv2D(8, 2, padding="same", name="even")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="depthwise")(x)
    x = keras.layers.Conv2D(8, 5, padding="same", name="same5", dtype=dtype)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(2)(x))


def test_only_stride_one_same_odd_convolutions_that_train_are_eligible():
    model = _model()
    assert [layer.name for layer in model.layers if eligible(layer)] == ["same3", "same5"]
    model.get_layer("same5").trainable = False
    assert [layer.name for layer in model.layers if eligible(layer)] == ["same3"]
    assert choose(model, 4, "native") == []
    assert [layer.name for layer, _, _ in choose(model, 4, "matmul")] == ["same3"]


def test_auto_times_each_eligible_layer_at_the_batch():
    """auto (no GPU here) times both ways for every eligible layer that computes in bfloat16 and
    routes only where the products win by the margin; each decision carries its measured
    milliseconds. A float32 model is left to the kernel without timing."""
    from kclassify.layers import conv_grad

    model = _model("mixed_bfloat16")
    calls = []

    def fake(layer, shape):
        calls.append((layer.name, shape))
        return (10.0, 5.0) if layer.name == "same3" else (10.0, 9.5)

    original, conv_grad._time_both = conv_grad._time_both, fake
    try:
        chosen = choose(model, 16, "auto")
    finally:
        conv_grad._time_both = original
    assert calls == [("same3", (16, 8, 8, 3)), ("same5", (16, 3, 3, 8))]
    assert [(layer.name, native, matmul) for layer, native, matmul in chosen] == [("same3", 10.0, 5.0)]
    calls.clear()
    original, conv_grad._time_both = conv_grad._time_both, fake
    try:
        assert choose(_model(), 16, "auto") == [] and calls == []
    finally:
        conv_grad._time_both = original
    native, matmul = conv_grad._time_both(model.get_layer("same3"), (16, 8, 8, 3))
    assert native > 0 and matmul > 0
    assert conv_grad._time_both(model.get_layer("same3"), (16, 8, 8, 3)) == (native, matmul)  # once per shape


def test_route_trains_like_tensorflow_and_ends_with_the_block(tmp_path):
    """The same model trained a step routed and unrouted lands on the same weights; after the
    block the layers are plain Keras again, in memory and on disk."""
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(16, 8, 8, 3)).astype(np.float32), rng.integers(0, 2, 16)
    weights, results = None, []
    for mode in ("native", "matmul"):
        model = _model()
        if weights is None:
            weights = model.get_weights()
        model.set_weights(weights)
        model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        lines = []
        with filter_gradients(model, 16, mode, echo=lines.append) as routed:
            assert [layer.name for layer in routed] == ([] if mode == "native" else ["same3", "same5"])
            model.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
        assert lines == ([] if mode == "native" else ["conv filter gradients as matrix products (matmul): 2 layers"])
        assert all("convolution_op" not in layer.__dict__ for layer in model.layers)
        results.append(model.get_weights())
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert type(loaded.get_layer("same3")) is keras.layers.Conv2D
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), atol=1e-6)


def test_fit_routes_per_recipe_and_says_so(tmp_path):
    from kclassify.commands.fit import fit

    recipe = tiny_recipe(tmp_path, train={"epochs": 1}, runtime={"conv_filter_grad": "matmul"})
    lines = []
    run = fit(recipe, echo=lines.append)
    routed = [line for line in lines if line.startswith("conv filter gradients as matrix products (matmul)")]
    assert len(routed) == 1, lines
    assert json.loads((run / "metrics.json").read_text())["val"]["top1"] > 0.3
