"""VGG with batch normalization (Simonyan & Zisserman 2015; BN as torchvision's vgg*_bn):
3x3 conv stacks (with bias) and max pools, flattened into two 4096 dense layers with dropout.
VGG-16-BN has 138,365,992 parameters at 224x224 and 1000 classes. For 32x32 images the
usual CIFAR head is pooling="avg", hidden=() (one dense layer on 512 features)."""
import keras
from keras import layers

from kclassify.models.blocks import classifier_head, conv_bn, model_input
from kclassify.models.registry import register

# convolutions per stage (widths 64, 128, 256, 512, 512)
DEPTHS = {11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2), 16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}


def vgg(depth, num_classes, input_shape, mean=None, std=None, bn_momentum=0.9, activation="relu",
        pooling="flatten", hidden=(4096, 4096), dropout=0.5):
    """VGG-`depth` (11, 13, 16, 19) with BN."""
    inputs, x = model_input(input_shape, mean, std)
    for stage, (convs, filters) in enumerate(zip(DEPTHS[depth], (64, 128, 256, 512, 512)), start=1):
        for block in range(1, convs + 1):
            x = conv_bn(x, filters, 3, 1, f"stage{stage}_block{block}", bn_momentum, act=activation, bias=True)
        x = layers.MaxPooling2D(2, strides=2, padding="same", name=f"stage{stage}_pool")(x)
    outputs = classifier_head(x, num_classes, dropout=dropout, pooling=pooling, hidden=tuple(hidden), act=activation)
    return keras.Model(inputs, outputs, name=f"vgg{depth}_bn")


register("vgg16_bn", vgg, "vgg", slow=True, input_size=224, depth=16)
register("vgg19_bn", vgg, "vgg", slow=True, input_size=224, depth=19)
