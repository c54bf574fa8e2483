"""Training-mode BatchNormalization through TensorFlow's fused kernel (FusedBatchNormV3).

Keras 3's BatchNormalization on the TensorFlow backend is built from small ops: a cast of a
bfloat16 input to float32, `tf.nn.moments`, `tf.nn.batch_normalization` and a cast back, each a
pass over the activation, and as many again in the gradient. The fused kernel reads the
activation once each way (bfloat16 in and out, float32 statistics; oneDNN on CPUs, cuDNN on
GPUs). Measured in benchmarks/train_speed.py (sweep arm "Keras BN (runtime.fused_bn false)").

`fuse_batchnorm(model)` makes the model's BatchNormalization layers take that path while they
train, with Keras' weights and moving-statistics update (the population variance, not the
kernel's Bessel-corrected one). The layers stay Keras' own class, so saved files, exports and the
QAT bridge see plain Keras; inference, and whatever the kernel does not do (a mask, renorm,
synchronized statistics, a 2-D input or another axis), run Keras' own code.
"""
import functools

# cuDNN's smallest epsilon; the CPU kernel takes any (airbench's is 1e-12).
_CUDNN_MIN_EPSILON = 1.001e-5


def fuse_batchnorm(model):
    """Route the training-mode call of every BatchNormalization in `model` (nested models
    included) through the fused kernel; returns how many layers now do."""
    import keras

    count = 0
    for layer in model._flatten_layers(include_self=False):
        if type(layer) is keras.layers.BatchNormalization and not getattr(layer, "_kc_fused", False):
            layer.call = _fused_call(layer, layer.call)
            layer._kc_fused = True
            count += 1
    return count


def _fused_call(layer, keras_call):
    @functools.wraps(keras_call)
    def call(inputs, training=None, mask=None):
        if not (training and layer.trainable and _fusable(layer, inputs, mask)):
            return keras_call(inputs, training=training, mask=mask)
        return _train_step_output(layer, inputs)

    return call


def _fusable(layer, inputs, mask):
    import tensorflow as tf  # here, so the layers package imports on any Keras backend

    rank = len(inputs.shape)
    return (mask is None and not layer.renorm and not layer.synchronized and rank == 4
            and layer.axis in (-1, rank - 1) and inputs.dtype in (tf.float32, tf.bfloat16, tf.float16))


def _train_step_output(layer, x):
    """Normalize `x` by its batch statistics and update the layer's moving statistics."""
    import tensorflow as tf

    channels = x.shape[-1]
    scale = layer.gamma if layer.scale else tf.ones([channels], tf.float32)
    offset = layer.beta if layer.center else tf.zeros([channels], tf.float32)
    epsilon = layer.epsilon
    if epsilon < _CUDNN_MIN_EPSILON and tf.config.list_physical_devices("GPU"):
        epsilon = _CUDNN_MIN_EPSILON
    empty = tf.constant([], tf.float32)
    # The raw op: tf.compat.v1.nn.fused_batch_norm raises every epsilon to cuDNN's minimum.
    out = tf.raw_ops.FusedBatchNormV3(x=x, scale=tf.cast(scale, tf.float32), offset=tf.cast(offset, tf.float32),
                                      mean=empty, variance=empty, epsilon=epsilon, data_format="NHWC",
                                      is_training=True)
    n = tf.cast(tf.size(x) // channels, tf.float32)
    variance = out.batch_variance * ((n - 1.0) / tf.maximum(n, 2.0))  # the kernel's is Bessel-corrected
    # A non-finite input must still reach the loss, where the engine's divergence check sees it: the
    # oneDNN kernel fused with the ReLU that follows maps NaN to 0, which Keras' own ops do not.
    layer.add_loss(0.0 * tf.reduce_sum(out.batch_mean))
    m = layer.momentum
    layer.moving_mean.assign(layer.moving_mean * m + out.batch_mean * (1.0 - m))
    layer.moving_variance.assign(layer.moving_variance * m + variance * (1.0 - m))
    return tf.cast(out.y, layer.compute_dtype)
