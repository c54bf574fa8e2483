"""Shared building blocks. Layer names follow stem / stageN_blockM_* / head so that
fine-tuning groups, profiling and debugging can address parts of a network by name."""
import keras
from keras import layers


def conv_bn(x, filters, kernel, stride, name, bn_momentum, act="relu", zero_gamma=False):
    """Conv (no bias: BN follows) + BN (+ activation). zero_gamma starts a residual branch at 0."""
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                      kernel_initializer="he_normal", name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=bn_momentum, epsilon=1e-5, name=f"{name}_bn",
                                  gamma_initializer="zeros" if zero_gamma else "ones")(x)
    if act:
        x = layers.Activation(act, name=f"{name}_{act}")(x)
    return x


def pad_shortcut(x, filters, stride, name):
    """Option-A shortcut of He et al. (2016): subsample, then zero-pad the new channels.

    Built from stock layers (pool of size 1 subsamples; a 3-D zero padding on a reshaped
    tensor pads channels) so it saves, loads and converts to TFLite builtins without custom code.
    """
    if stride > 1:
        x = layers.MaxPooling2D(pool_size=1, strides=stride, name=f"{name}_subsample")(x)
    extra = filters - x.shape[-1]
    if extra > 0:
        h, w, c = x.shape[1:]
        x = layers.Reshape((h, w, c, 1), name=f"{name}_expand")(x)
        x = layers.ZeroPadding3D(((0, 0), (0, 0), (extra // 2, extra - extra // 2)), name=f"{name}_pad")(x)
        x = layers.Reshape((h, w, filters), name=f"{name}_squeeze")(x)
    return x


def basic_block(x, filters, stride, name, bn_momentum, shortcut="A", zero_gamma=False, act="relu"):
    """Two 3x3 convs with an identity (or option A/B projection) shortcut, post-activation."""
    y = conv_bn(x, filters, 3, stride, f"{name}_1", bn_momentum, act=act)
    y = conv_bn(y, filters, 3, 1, f"{name}_2", bn_momentum, act=None, zero_gamma=zero_gamma)
    if stride != 1 or x.shape[-1] != filters:
        if shortcut == "A":
            x = pad_shortcut(x, filters, stride, f"{name}_short")
        else:
            x = conv_bn(x, filters, 1, stride, f"{name}_short", bn_momentum, act=None)
    x = layers.Add(name=f"{name}_add")([x, y])
    return layers.Activation(act, name=f"{name}_out")(x)


def classifier_head(x, num_classes, dropout=0.0, pooling="avg"):
    """Global pooling, optional dropout, dense logits, float32 softmax (safe under mixed precision)."""
    pool = layers.GlobalAveragePooling2D if pooling == "avg" else layers.GlobalMaxPooling2D
    x = pool(name="head_pool")(x)
    if dropout:
        x = layers.Dropout(dropout, name="head_dropout")(x)
    x = layers.Dense(num_classes, name="head_dense")(x)
    return layers.Activation("softmax", dtype="float32", name="predictions")(x)


def model_input(input_shape, mean, std):
    """Raw pixels (0..255, float) in; per-channel normalization is the model's first layer."""
    inputs = keras.Input(shape=tuple(input_shape), name="pixels")
    channels = input_shape[-1]
    mean = [float(m) for m in (mean if mean is not None else [127.5] * channels)]
    std = [float(s) for s in (std if std is not None else [64.0] * channels)]
    x = layers.Normalization(mean=mean, variance=[s * s for s in std], name="normalize")(inputs)
    return inputs, x
