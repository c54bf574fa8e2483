"""Wide ResNets (Zagoruyko & Komodakis, 2016): WRN-d-k, pre-activation basic blocks
(BN-ReLU-conv), dropout between the two convolutions, widths 16k/32k/64k, (d-4)/6 blocks a stage.
WRN-28-10 has 36.5M parameters."""
import keras
from keras import layers

from kclassify.models.blocks import classifier_head, model_input
from kclassify.models.registry import register


def _bn_relu(x, name, bn_momentum):
    x = layers.BatchNormalization(momentum=bn_momentum, epsilon=1e-5, name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def _conv(x, filters, kernel, stride, name):
    return layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                         kernel_initializer="he_normal", name=f"{name}_conv")(x)


def preact_block(x, filters, stride, name, bn_momentum, dropout=0.0):
    """BN-ReLU-conv3x3 (-dropout) -BN-ReLU-conv3x3, plus identity or a 1x1 projection of the
    pre-activated input when the shape changes (as in the reference implementation)."""
    pre = _bn_relu(x, f"{name}_pre", bn_momentum)
    y = _conv(pre, filters, 3, stride, f"{name}_1")
    y = _bn_relu(y, f"{name}_mid", bn_momentum)
    if dropout:
        y = layers.Dropout(dropout, name=f"{name}_dropout")(y)
    y = _conv(y, filters, 3, 1, f"{name}_2")
    if stride != 1 or x.shape[-1] != filters:
        x = _conv(pre, filters, 1, stride, f"{name}_short")
    return layers.Add(name=f"{name}_add")([x, y])


def wide_resnet(depth, k, num_classes, input_shape, mean=None, std=None, bn_momentum=0.9, dropout=0.0):
    """WRN-depth-k; `dropout` is the rate between convolutions (the paper uses 0.3)."""
    if (depth - 4) % 6:
        raise ValueError(f"WRN depth must be 6n+4, got {depth}")
    n = (depth - 4) // 6
    inputs, x = model_input(input_shape, mean, std)
    x = _conv(x, 16, 3, 1, "stem")
    for stage, filters in enumerate((16 * k, 32 * k, 64 * k), start=1):
        for block in range(1, n + 1):
            stride = 2 if (block == 1 and stage > 1) else 1
            x = preact_block(x, filters, stride, f"stage{stage}_block{block}", bn_momentum, dropout)
    x = _bn_relu(x, "head_pre", bn_momentum)
    outputs = classifier_head(x, num_classes)
    return keras.Model(inputs, outputs, name=f"wrn{depth}_{k}")


for _d, _k in ((16, 4), (16, 8), (28, 10), (40, 4)):
    register(f"wrn{_d}_{_k}", wide_resnet, "wide_resnet", slow=_d * _k >= 128, depth=_d, k=_k)
