"""CIFAR ResNeXt-29 (Xie et al. 2017): a 3x3 stem of 64 channels, three stages of three grouped
bottlenecks (outputs 256/512/1024, inner width cardinality x base_width x 2^stage), projection
shortcuts. 8x64d has 34.4M parameters, 16x64d 68.1M (at 100 classes). The ImageNet ResNeXt-50
(32x4d) is the ResNet builder with groups; see resnet_imagenet.py."""
import keras

from kclassify.models.blocks import ResidualStyle, classifier_head, conv_bn, model_input, residual_stages
from kclassify.models.registry import register


def resnext_cifar(depth, num_classes, input_shape, mean=None, std=None, bn_momentum=0.9, cardinality=8,
                  base_width=64, se_ratio=0, activation="relu", zero_gamma=False, drop_path_rate=0.0,
                  drop_block=None, pooling="avg", dropout=0.0):
    """ResNeXt-`depth` (9n+2) for 32x32 images, `cardinality` x `base_width`d."""
    if (depth - 2) % 9:
        raise ValueError(f"ResNeXt depth must be 9n+2, got {depth}")
    n = (depth - 2) // 9
    stages = [(n, 256 * 2 ** i, cardinality * base_width * 2 ** i, 1 if i == 0 else 2) for i in range(3)]
    style = ResidualStyle(bottleneck=True, groups=cardinality, se_ratio=se_ratio, act=activation,
                          zero_gamma=zero_gamma)
    inputs, x = model_input(input_shape, mean, std)
    x = conv_bn(x, 64, 3, 1, "stem", bn_momentum, act=activation)
    x = residual_stages(x, stages, style, bn_momentum, drop_path_rate, drop_block)
    outputs = classifier_head(x, num_classes, dropout=dropout, pooling=pooling)
    return keras.Model(inputs, outputs, name=f"resnext{depth}_{cardinality}x{base_width}d")


register("resnext29_8x64d", resnext_cifar, "resnext", slow=True, depth=29, cardinality=8)
register("resnext29_16x64d", resnext_cifar, "resnext", slow=True, depth=29, cardinality=16)
