"""GoogLeNet (Szegedy et al. 2015) with batch norm after every conv (as torchvision), without
the auxiliary classifiers. The paper's third branch is 1x1 -> 5x5; torchvision's is 1x1 -> 3x3
(6,624,904 parameters at 1000 classes): `branch3_kernel` selects, default the paper's 5."""
import keras
from keras import layers

from kclassify.models.blocks import classifier_head, conv_bn, model_input
from kclassify.models.registry import register

# Table 1: (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj) per module, stages 3, 4, 5
STAGES = {3: [(64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64)],
          4: [(192, 96, 208, 16, 48, 64), (160, 112, 224, 24, 64, 64), (128, 128, 256, 24, 64, 64),
              (112, 144, 288, 32, 64, 64), (256, 160, 320, 32, 128, 128)],
          5: [(256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128)]}


def inception(x, widths, name, bn_momentum, act="relu", branch3_kernel=5):
    """Four branches concatenated: 1x1; 1x1 -> 3x3; 1x1 -> kxk; 3x3 max pool -> 1x1."""
    b1, r3, b3, r5, b5, bp = widths
    one = conv_bn(x, b1, 1, 1, f"{name}_b1", bn_momentum, act=act)
    three = conv_bn(conv_bn(x, r3, 1, 1, f"{name}_b2_1", bn_momentum, act=act), b3, 3, 1, f"{name}_b2_2",
                    bn_momentum, act=act)
    five = conv_bn(conv_bn(x, r5, 1, 1, f"{name}_b3_1", bn_momentum, act=act), b5, branch3_kernel, 1, f"{name}_b3_2",
                   bn_momentum, act=act)
    pool = layers.MaxPooling2D(3, strides=1, padding="same", name=f"{name}_b4_pool")(x)
    pool = conv_bn(pool, bp, 1, 1, f"{name}_b4", bn_momentum, act=act)
    return layers.Concatenate(name=f"{name}_concat")([one, three, five, pool])


def googlenet(num_classes, input_shape, mean=None, std=None, bn_momentum=0.9, activation="relu",
              branch3_kernel=5, pooling="avg", dropout=0.2):
    """GoogLeNet (Inception v1) with BN, no auxiliary heads."""
    inputs, x = model_input(input_shape, mean, std)
    x = conv_bn(x, 64, 7, 2, "stem_1", bn_momentum, act=activation)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool1")(x)
    x = conv_bn(x, 64, 1, 1, "stem_2", bn_momentum, act=activation)
    x = conv_bn(x, 192, 3, 1, "stem_3", bn_momentum, act=activation)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool2")(x)
    for stage, modules in STAGES.items():
        if stage > 3:  # between stages: 3x3/2 max pool (2x2/2 before stage 5, as torchvision)
            size = 3 if stage == 4 else 2
            x = layers.MaxPooling2D(size, strides=2, padding="same", name=f"stage{stage}_pool")(x)
        for block, widths in enumerate(modules, start=1):
            x = inception(x, widths, f"stage{stage}_block{block}", bn_momentum, activation, branch3_kernel)
    outputs = classifier_head(x, num_classes, dropout=dropout, pooling=pooling)
    return keras.Model(inputs, outputs, name="googlenet")


register("googlenet", googlenet, "googlenet", slow=True, input_size=224)  # 12 s of the fast tier at 32x32
