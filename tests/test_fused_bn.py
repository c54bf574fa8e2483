"""runtime.fused_bn: BatchNorm trains through FusedBatchNormV3 and computes what Keras' layer computes."""
import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from kclassify.layers.fused_bn import fuse_batchnorm  # noqa: E402


def _pair(x_shape, seed=0, **kw):
    """A Keras BatchNormalization and a fused twin with the same random weights."""
    rng = np.random.default_rng(seed)
    plain, fused = keras.layers.BatchNormalization(**kw), keras.layers.BatchNormalization(**kw)
    plain.build(x_shape)
    fused.build(x_shape)
    weights = [rng.normal(size=w.shape).astype(np.float32) for w in plain.get_weights()]
    weights[-1] = np.abs(weights[-1]) + 0.5  # moving variance
    plain.set_weights(weights)
    fused.set_weights(weights)
    assert fuse_batchnorm(keras.Sequential([fused])) == 1
    return plain, fused


def _outputs_and_grads(layer, x, training):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=training)
        loss = tf.reduce_sum(y * tf.sin(y))
    return y, tape.gradient(loss, [x, *layer.trainable_variables])


@pytest.mark.parametrize("kw", [dict(momentum=0.6, epsilon=1e-12), dict(center=False), dict(scale=False), {}])
def test_training_step_matches_keras(kw):
    x = tf.constant(np.random.default_rng(1).normal(2.0, 3.0, (8, 5, 5, 7)).astype(np.float32))
    plain, fused = _pair(x.shape, **kw)
    y0, g0 = _outputs_and_grads(plain, x, training=True)
    y1, g1 = _outputs_and_grads(fused, x, training=True)
    np.testing.assert_allclose(y1.numpy(), y0.numpy(), atol=1e-5)
    for a, b in zip(g1, g0):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4)
    # the moving statistics move the same way (population variance, the layer's momentum)
    for a, b in zip(fused.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(fused.moving_mean.numpy(), 0.0)


def test_inference_is_keras_own_code_and_the_layer_stays_plain(tmp_path):
    x = tf.constant(np.random.default_rng(2).normal(size=(4, 3, 3, 5)).astype(np.float32))
    plain, fused = _pair(x.shape)
    np.testing.assert_array_equal(fused(x, training=False).numpy(), plain(x, training=False).numpy())
    model = keras.Sequential([keras.Input((3, 3, 5)), keras.layers.Conv2D(5, 1), keras.layers.BatchNormalization()])
    assert fuse_batchnorm(model) == 1 and fuse_batchnorm(model) == 0  # once only
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert type(loaded.layers[-1]) is keras.layers.BatchNormalization
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), atol=1e-6)


def test_bfloat16_activations_stay_close_to_keras():
    x = tf.cast(tf.constant(np.random.default_rng(3).normal(size=(16, 6, 6, 8)).astype(np.float32)), tf.bfloat16)
    plain, fused = _pair(x.shape, dtype="mixed_bfloat16")
    y0, y1 = plain(x, training=True), fused(x, training=True)
    assert y1.dtype == tf.bfloat16
    np.testing.assert_allclose(tf.cast(y1, tf.float32).numpy(), tf.cast(y0, tf.float32).numpy(), atol=0.05)
    np.testing.assert_allclose(fused.moving_mean.numpy(), plain.moving_mean.numpy(), atol=1e-2)


def test_what_the_kernel_cannot_do_falls_back():
    x2d = tf.constant(np.random.default_rng(4).normal(size=(8, 6)).astype(np.float32))
    plain, fused = _pair(x2d.shape)
    np.testing.assert_allclose(fused(x2d, training=True).numpy(), plain(x2d, training=True).numpy(), atol=1e-6)
    x = tf.constant(np.random.default_rng(5).normal(size=(4, 3, 3, 5)).astype(np.float32))
    plain, fused = _pair(x.shape, axis=1)
    np.testing.assert_allclose(fused(x, training=True).numpy(), plain(x, training=True).numpy(), atol=1e-5)


def test_runtime_option_reaches_the_model():
    from kclassify.recipe import RuntimeConfig
    from kclassify.train.setup import apply_runtime_options

    def fresh():
        return keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Conv2D(4, 1), keras.layers.BatchNormalization()])

    on, off, synced = fresh(), fresh(), fresh()
    apply_runtime_options(on, RuntimeConfig())
    apply_runtime_options(off, RuntimeConfig(fused_bn=False))
    apply_runtime_options(synced, RuntimeConfig(sync_bn=True))
    assert getattr(on.layers[-1], "_kc_fused", False) and not getattr(off.layers[-1], "_kc_fused", False)
    assert synced.layers[-1].synchronized  # the fused path steps aside for synchronized statistics


def test_a_non_finite_activation_still_reaches_the_loss():
    """oneDNN fuses BN with the ReLU after it and maps NaN to 0; the engine's divergence check
    reads the loss, so the fused path carries the NaN there itself."""
    model = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(4, 3), keras.layers.BatchNormalization(),
                              keras.layers.ReLU(), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)])
    fuse_batchnorm(model)
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = np.random.default_rng(6).random((8, 6, 6, 1)).astype(np.float32), np.arange(8) % 3
    assert np.isfinite(model.train_on_batch(x, y))
    kernel = model.layers[0].kernel
    kernel.assign(np.full(kernel.shape, np.nan, np.float32))
    assert np.isnan(model.train_on_batch(x, y))
