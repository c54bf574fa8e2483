"""CIFAR ResNets of He et al. (2016), depth 6n+2 with widths 16/32/64 and option-A shortcuts
(ResNet-20 has 0.27M parameters at 10 classes, as in the paper's Table 6)."""
import keras

from kclassify.models.blocks import basic_block, classifier_head, conv_bn, model_input
from kclassify.models.registry import register


def cifar_resnet(depth, num_classes, input_shape, mean=None, std=None, bn_momentum=0.9,
                 width_mult=1.0, shortcut="A", zero_gamma=False, dropout=0.0, activation="relu"):
    """Build a CIFAR ResNet: depth must be 6n+2; `width_mult` multiplies the 16/32/64 channels."""
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
    n = (depth - 2) // 6
    widths = [int(round(w * width_mult)) for w in (16, 32, 64)]
    inputs, x = model_input(input_shape, mean, std)
    x = conv_bn(x, widths[0], 3, 1, "stem", bn_momentum, act=activation)
    for stage, filters in enumerate(widths, start=1):
        for block in range(1, n + 1):
            stride = 2 if (block == 1 and stage > 1) else 1
            x = basic_block(x, filters, stride, f"stage{stage}_block{block}", bn_momentum,
                            shortcut=shortcut, zero_gamma=zero_gamma, act=activation)
    outputs = classifier_head(x, num_classes, dropout=dropout)
    return keras.Model(inputs, outputs, name=f"resnet{depth}")


for _depth in (20, 32, 44, 56, 110, 1202):
    register(f"resnet{_depth}", cifar_resnet, "resnet_cifar", slow=_depth >= 110, depth=_depth)
