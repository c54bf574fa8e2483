"""Shared building blocks. Layer names follow stem / stageN_blockM_* / head so that
fine-tuning groups, profiling and debugging can address parts of a network by name.

One function per idea: `residual_block` covers basic, bottleneck, grouped (ResNeXt),
pre-activation, SE and wide blocks, selected by a `ResidualStyle`; `inverted_residual` is the
MobileNet block and `dense_block` the DenseNet one. Families differ only in their stage tables."""
from dataclasses import dataclass

import keras
from keras import layers

from kclassify.errors import RecipeError

from kclassify.layers.gem_pooling import GeMPooling2D
from kclassify.layers.pad_shortcut import PadShortcut
from kclassify.layers.stochastic_depth import StochasticDepth

# Our activation names -> Keras names. hard_swish is Keras' hard_silu (x * relu6(x + 3) / 6),
# which converts to TFLite builtins; swish is silu.
ACTIVATIONS = {"relu": "relu", "relu6": "relu6", "swish": "silu", "silu": "silu",
               "hard_swish": "hard_silu", "hard_sigmoid": "hard_sigmoid", "sigmoid": "sigmoid"}


def activation(x, act, name):
    return layers.Activation(ACTIVATIONS.get(act, act), name=name)(x)


def make_divisible(value, divisor=8):
    """Round channels to a multiple of `divisor`, never more than 10% down (MobileNet rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def conv(x, filters, kernel, stride, name, groups=1, bias=False, padding="same", depthwise=False):
    """A plain convolution named `{name}_conv` (`{name}_dwconv` when depthwise)."""
    if depthwise:
        return layers.DepthwiseConv2D(kernel, strides=stride, padding=padding, use_bias=bias,
                                      depthwise_initializer="he_normal", name=f"{name}_dwconv")(x)
    return layers.Conv2D(filters, kernel, strides=stride, padding=padding, groups=groups, use_bias=bias,
                         kernel_initializer="he_normal", name=f"{name}_conv")(x)


def batch_norm(x, name, bn_momentum, zero_gamma=False):
    return layers.BatchNormalization(momentum=bn_momentum, epsilon=1e-5, name=f"{name}_bn",
                                     gamma_initializer="zeros" if zero_gamma else "ones")(x)


def conv_bn(x, filters, kernel, stride, name, bn_momentum, act="relu", zero_gamma=False, groups=1,
            depthwise=False, bias=False, padding="same"):
    """Conv (no bias: BN follows) + BN (+ activation). zero_gamma starts a residual branch at 0."""
    x = conv(x, filters, kernel, stride, name, groups=groups, bias=bias, padding=padding, depthwise=depthwise)
    x = batch_norm(x, name, bn_momentum, zero_gamma)
    if act:
        x = activation(x, act, f"{name}_{act}")
    return x


def bn_act(x, name, bn_momentum, act="relu"):
    """BN + activation: the pre-activation that opens a pre-act or dense unit."""
    return activation(batch_norm(x, name, bn_momentum), act, f"{name}_{act}")


def squeeze_excite(x, reduced, name, act="relu", gate="sigmoid"):
    """Squeeze-and-Excitation (Hu et al. 2018) from stock layers: global pool, 1x1 reduce (with
    bias, as the paper's FC layers), activation, 1x1 expand, gate, channel-wise rescale."""
    s = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_se_pool")(x)
    s = layers.Conv2D(reduced, 1, name=f"{name}_se_reduce")(s)
    s = activation(s, act, f"{name}_se_{act}")
    s = layers.Conv2D(x.shape[-1], 1, name=f"{name}_se_expand")(s)
    s = activation(s, gate, f"{name}_se_{gate}")
    return layers.Multiply(name=f"{name}_se_scale")([x, s])


def drop_path(x, rate, name):
    """Stochastic depth on a residual branch (identity at inference, so nothing in TFLite)."""
    if not rate:
        return x

    return StochasticDepth(rate, name=f"{name}_drop_path")(x)


def pad_shortcut(x, filters, stride, name):
    """Option-A shortcut of He et al. (2016): subsample, then zero-pad the new channels (one
    weightless layer that TFLite runs as a single delegated CONV_2D; see PadShortcut)."""
    if stride == 1 and filters == x.shape[-1]:
        return x

    return PadShortcut(filters, stride, name=f"{name}_pad")(x)


@dataclass(frozen=True)
class ResidualStyle:
    """How every residual block of a network is built (the per-block part is filters/stride).

    shortcut: "A" subsample + zero-pad, "B" 1x1 conv projection, "D" 2x2 average pool then 1x1
    conv (Bag of Tricks ResNet-D). stride_on_3x3: the stride sits on the 3x3 of a bottleneck
    (ResNet-B / torchvision), not on its first 1x1 (the original). se_ratio: 0 for none, else the
    SE reduction (16 in Hu et al.). dropout: between the convolutions (WRN). zero_gamma applies
    to the last BN of the branch (post-activation blocks only: a pre-act branch ends in a conv).
    """
    bottleneck: bool = False
    preact: bool = False
    groups: int = 1
    se_ratio: int = 0
    shortcut: str = "B"
    stride_on_3x3: bool = True
    act: str = "relu"
    zero_gamma: bool = False
    dropout: float = 0.0


def _branch_convs(filters, mid, stride, style):
    """(kernel, channels, stride, groups) of each convolution of the residual branch."""
    if not style.bottleneck:
        return [(3, mid, stride, 1), (3, filters, 1, 1)]
    first, middle = (1, stride) if style.stride_on_3x3 else (stride, 1)
    return [(1, mid, first, 1), (3, mid, middle, style.groups), (1, filters, 1, 1)]


def _shortcut(x, pre, filters, stride, name, bn_momentum, style):
    if stride == 1 and x.shape[-1] == filters:
        return x
    if style.shortcut == "A":
        return pad_shortcut(x, filters, stride, f"{name}_short")
    # Pre-activation nets project the pre-activated input (as the reference implementations).
    src = pre if style.preact else x
    if style.shortcut == "D" and stride > 1:
        src = layers.AveragePooling2D(stride, strides=stride, padding="same", name=f"{name}_short_pool")(src)
        stride = 1
    if style.preact:
        return conv(src, filters, 1, stride, f"{name}_short")
    return conv_bn(src, filters, 1, stride, f"{name}_short", bn_momentum, act=None)


def residual_block(x, filters, stride, name, bn_momentum, style=ResidualStyle(), mid=None,
                   drop_rate=0.0, drop_block=None):
    """A residual unit: branch of convs (see ResidualStyle) + shortcut, then add.

    `filters` is the output width, `mid` the inner width (bottleneck/grouped; default filters).
    `drop_rate` is this block's stochastic-depth rate; `drop_block(tensor, name) -> tensor` is
    the DropBlock hook applied after each branch convolution when given.
    """
    convs = _branch_convs(filters, mid or filters, stride, style)
    pre = y = bn_act(x, f"{name}_1", bn_momentum, style.act) if style.preact else x
    for i, (kernel, channels, s, groups) in enumerate(convs, start=1):
        last = i == len(convs)
        if style.preact and i > 1:
            y = bn_act(y, f"{name}_{i}", bn_momentum, style.act)
        if last and style.dropout:
            y = layers.Dropout(style.dropout, name=f"{name}_dropout")(y)
        if style.preact:
            y = conv(y, channels, kernel, s, f"{name}_{i}", groups=groups)
        else:
            y = conv_bn(y, channels, kernel, s, f"{name}_{i}", bn_momentum, act=None if last else style.act,
                        zero_gamma=last and style.zero_gamma, groups=groups)
        if drop_block is not None:
            y = drop_block(y, f"{name}_{i}")
    if style.se_ratio:
        y = squeeze_excite(y, max(1, filters // style.se_ratio), name)
    y = drop_path(y, drop_rate, name)
    x = layers.Add(name=f"{name}_add")([_shortcut(x, pre, filters, stride, name, bn_momentum, style), y])
    return x if style.preact else activation(x, style.act, f"{name}_out")


def basic_block(x, filters, stride, name, bn_momentum, shortcut="A", zero_gamma=False, act="relu"):
    """Two 3x3 convs with an identity (or option A/B projection) shortcut, post-activation."""
    style = ResidualStyle(shortcut=shortcut, zero_gamma=zero_gamma, act=act)
    return residual_block(x, filters, stride, name, bn_momentum, style)


def residual_stages(x, stages, style, bn_momentum, drop_path_rate=0.0, drop_block=None):
    """Run a stage table [(blocks, filters, mid, stride), ...] of residual blocks.

    Stochastic depth grows linearly with block index up to `drop_path_rate` at the last block
    (Huang et al. 2016); the DropBlock hook is applied in the last two stages (Ghiasi et al. 2018
    use groups 3 and 4 of ResNet-50).
    """
    total, index = sum(s[0] for s in stages), 0
    for stage, (blocks, filters, mid, stride) in enumerate(stages, start=1):
        hook = drop_block if stage >= len(stages) - 1 else None
        for block in range(1, blocks + 1):
            index += 1
            x = residual_block(x, filters, stride if block == 1 else 1, f"stage{stage}_block{block}",
                               bn_momentum, style, mid=mid, drop_rate=drop_path_rate * index / total,
                               drop_block=hook)
    return x


def inverted_residual(x, out, expanded, kernel, stride, name, bn_momentum, act="relu", se=False,
                      zero_gamma=False, drop_rate=0.0):
    """MobileNetV2/V3 block: 1x1 expand (skipped when no expansion), depthwise kxk, optional SE
    (hard-sigmoid gate, squeeze to expanded/4 rounded to 8, as MobileNetV3), linear 1x1 project;
    identity shortcut when shape allows."""
    y = x
    if expanded != x.shape[-1]:
        y = conv_bn(y, expanded, 1, 1, f"{name}_expand", bn_momentum, act=act)
    y = conv_bn(y, expanded, kernel, stride, f"{name}_dw", bn_momentum, act=act, depthwise=True)
    if se:
        y = squeeze_excite(y, make_divisible(expanded // 4), name, act="relu", gate="hard_sigmoid")
    y = conv_bn(y, out, 1, 1, f"{name}_project", bn_momentum, act=None, zero_gamma=zero_gamma)
    if stride == 1 and x.shape[-1] == out:
        y = layers.Add(name=f"{name}_add")([x, drop_path(y, drop_rate, name)])
    return y


def dense_block(x, count, growth, name, bn_momentum, bottleneck=4, act="relu", drop_block=None):
    """DenseNet(-BC) block: `count` layers of BN-act-conv1x1(bottleneck*growth)-BN-act-conv3x3(growth),
    each concatenated to its input (no 1x1 when bottleneck is 0)."""
    for i in range(1, count + 1):
        block = f"{name}_block{i}"
        y = x
        if bottleneck:
            y = conv(bn_act(y, f"{block}_1", bn_momentum, act), bottleneck * growth, 1, 1, f"{block}_1")
        y = conv(bn_act(y, f"{block}_2", bn_momentum, act), growth, 3, 1, f"{block}_2")
        if drop_block is not None:
            y = drop_block(y, f"{block}_2")
        x = layers.Concatenate(name=f"{block}_concat")([x, y])
    return x


def _pool(x, pooling):
    if pooling == "avg":
        return layers.GlobalAveragePooling2D(name="head_pool")(x)
    if pooling == "max":
        return layers.GlobalMaxPooling2D(name="head_pool")(x)
    if pooling == "gem":
        return GeMPooling2D(name="head_pool")(x)
    if pooling == "flatten":
        return layers.Flatten(name="head_flatten")(x)
    raise ValueError(f"unknown pooling {pooling!r}; choose avg, max, gem or flatten")


def classifier_head(x, num_classes, dropout=0.0, pooling="avg", hidden=(), act="relu"):
    """Global pooling (avg, max, GeM or flatten), optional hidden dense layers (each followed by
    `act` and dropout, as VGG and MobileNetV3), dropout, dense logits, float32 softmax (safe
    under mixed precision)."""
    x = _pool(x, pooling)
    for i, width in enumerate(hidden, start=1):
        x = layers.Dense(width, name=f"head_fc{i}")(x)
        x = activation(x, act, f"head_fc{i}_{act}")
        if dropout:
            x = layers.Dropout(dropout, name=f"head_fc{i}_dropout")(x)
    if dropout and not hidden:
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


def match_channels(x, channels, what):
    """`x` for a network that takes `channels`-channel images: a grayscale image reaches a 3-channel
    pretrained backbone with its one channel repeated inside the model (as the literature feeds
    grayscale data to ImageNet weights), so the exported file still takes the data's own channels."""
    have = int(x.shape[-1])
    if have == channels:
        return x
    if have == 1 and channels == 3:
        return layers.Concatenate(axis=-1, name="gray_to_rgb")([x, x, x])
    raise RecipeError(f"{what} takes {channels}-channel images but the data has {have}; only grayscale "
                      "(1 channel) is converted, by repeating it into RGB")


def classification_head(x, num_classes, pooling="avg", dropout=0.0, l2_normalize=False):
    """head_pool (global "avg" or "max" over a feature map; None: x is pooled already) /
    head_l2norm / head_dropout / head_dense, then the softmax."""
    if pooling is not None:
        pool = {"avg": layers.GlobalAveragePooling2D, "max": layers.GlobalMaxPooling2D}[pooling]
        x = pool(name="head_pool")(x)
    if l2_normalize:
        x = layers.UnitNormalization(name="head_l2norm")(x)
    if dropout:
        x = layers.Dropout(dropout, name="head_dropout")(x)
    x = layers.Dense(num_classes, name="head_dense")(x)
    return layers.Activation("softmax", dtype="float32", name="predictions")(x)
