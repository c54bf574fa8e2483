"""SqueezeNet 1.0 (Iandola et al. 2016): a 7x7/2 stem, eight fire modules (1x1 squeeze, then
parallel 1x1 and 3x3 expands, concatenated), no batch norm, and a convolutional classifier
(dropout, 1x1 conv to the classes, ReLU, global average pool). 1,248,424 parameters at 1000
classes (torchvision's count)."""
import keras
from keras import layers

from kclassify.models.blocks import activation, conv, model_input
from kclassify.models.registry import register

# (squeeze, expand) per fire module; a max pool precedes the modules marked True
FIRES = [(16, 64, False), (16, 64, False), (32, 128, False), (32, 128, True), (48, 192, False),
         (48, 192, False), (64, 256, False), (64, 256, True)]


def _conv_act(x, filters, kernel, stride, name, act, padding="same"):
    return activation(conv(x, filters, kernel, stride, name, bias=True, padding=padding), act, f"{name}_{act}")


def fire(x, squeeze, expand, name, act="relu"):
    """Fire module: squeeze 1x1, then 1x1 and 3x3 expands side by side."""
    s = _conv_act(x, squeeze, 1, 1, f"{name}_squeeze", act)
    return layers.Concatenate(name=f"{name}_concat")(
        [_conv_act(s, expand, 1, 1, f"{name}_expand1", act), _conv_act(s, expand, 3, 1, f"{name}_expand3", act)])


def ceil_pool(x, name):
    """3x3/2 max pool with Caffe's ceil rounding (the reference's maps: 109 -> 54 -> 27 -> 13):
    one zero row/column at the end where needed, harmless after ReLU (values are >= 0)."""
    h, w = x.shape[1:3]
    if (h - 3) % 2 or (w - 3) % 2:
        x = layers.ZeroPadding2D(((0, (h - 3) % 2), (0, (w - 3) % 2)), name=f"{name}_pad")(x)
    return layers.MaxPooling2D(3, strides=2, name=name)(x)


def squeezenet(num_classes, input_shape, mean=None, std=None, bn_momentum=0.9, activation="relu", dropout=0.5):
    """SqueezeNet 1.0; bn_momentum is accepted for a uniform signature (the net has no BN)."""
    inputs, x = model_input(input_shape, mean, std)
    x = _conv_act(x, 96, 7, 2, "stem", activation, padding="valid")
    x = ceil_pool(x, "stem_pool")
    stage = 1
    for i, (squeeze, expand, pool_first) in enumerate(FIRES, start=1):
        if pool_first:
            stage += 1
            x = ceil_pool(x, f"stage{stage}_pool")
        x = fire(x, squeeze, expand, f"stage{stage}_block{i}", activation)
    if dropout:
        x = layers.Dropout(dropout, name="head_dropout")(x)
    x = _conv_act(x, num_classes, 1, 1, "head", "relu")
    x = layers.GlobalAveragePooling2D(name="head_pool")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="predictions")(x)
    return keras.Model(inputs, outputs, name="squeezenet1_0")


register("squeezenet1_0", squeezenet, "squeezenet", input_size=224)
