"""ImageNet ResNets (He et al. 2016) with the Bag-of-Tricks variants (He et al. 2019), ResNeXt-50
(Xie et al. 2017) and SE-ResNet/SE-ResNeXt (Hu et al. 2018): one builder, stage tables as data.

variant "a": stride on the first 1x1 of a bottleneck (the original paper); "b": stride on the
3x3 (torchvision's v1.5, the default); "c": b with a deep stem of three 3x3 convs; "d": c with
an average-pooled projection shortcut. ResNet-50 "b" has 25,557,032 trainable parameters at
1000 classes (torchvision's count)."""
import keras
from keras import layers

from kclassify.models.blocks import ResidualStyle, classifier_head, conv_bn, model_input, residual_stages
from kclassify.models.registry import register

# depth -> (bottleneck, blocks per stage)
DEPTHS = {18: (False, (2, 2, 2, 2)), 34: (False, (3, 4, 6, 3)), 50: (True, (3, 4, 6, 3)),
          101: (True, (3, 4, 23, 3)), 152: (True, (3, 8, 36, 3))}
VARIANTS = ("a", "b", "c", "d")


def _stem(x, variant, cifar_stem, bn_momentum, act):
    if cifar_stem:  # 32x32 input: keep the resolution, as CIFAR ResNets do
        return conv_bn(x, 64, 3, 1, "stem", bn_momentum, act=act)
    if variant in ("c", "d"):
        x = conv_bn(x, 32, 3, 2, "stem_1", bn_momentum, act=act)
        x = conv_bn(x, 32, 3, 1, "stem_2", bn_momentum, act=act)
        x = conv_bn(x, 64, 3, 1, "stem_3", bn_momentum, act=act)
    else:
        x = conv_bn(x, 64, 7, 2, "stem", bn_momentum, act=act)
    return layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)


def resnet(depth, num_classes, input_shape, mean=None, std=None, bn_momentum=0.9, variant="b",
           cifar_stem=False, groups=1, width_per_group=64, se_ratio=0, activation="relu",
           zero_gamma=False, drop_path_rate=0.0, drop_block=None, pooling="avg", dropout=0.0):
    """ImageNet-style ResNet/ResNeXt of `depth` (18, 34, 50, 101, 152).

    groups/width_per_group make it a ResNeXt (32 and 4 for 32x4d); se_ratio=16 adds SE to every
    block; cifar_stem replaces the 7x7/2 conv + max pool by one 3x3/1 conv for 32x32 images.
    """
    if depth not in DEPTHS or variant not in VARIANTS:
        raise ValueError(f"ResNet depth must be one of {sorted(DEPTHS)} and variant one of {VARIANTS}")
    bottleneck, blocks = DEPTHS[depth]
    expansion = 4 if bottleneck else 1
    stages = [(n, planes * expansion, int(planes * width_per_group / 64) * groups, 1 if i == 0 else 2)
              for i, (n, planes) in enumerate(zip(blocks, (64, 128, 256, 512)))]
    style = ResidualStyle(bottleneck=bottleneck, groups=groups, se_ratio=se_ratio, act=activation,
                          shortcut="D" if variant == "d" else "B", stride_on_3x3=variant != "a",
                          zero_gamma=zero_gamma)
    inputs, x = model_input(input_shape, mean, std)
    x = _stem(x, variant, cifar_stem, bn_momentum, activation)
    x = residual_stages(x, stages, style, bn_momentum, drop_path_rate, drop_block)
    outputs = classifier_head(x, num_classes, dropout=dropout, pooling=pooling)
    return keras.Model(inputs, outputs, name=f"resnet{depth}")


for _depth in DEPTHS:
    register(f"resnet{_depth}", resnet, "resnet_imagenet", slow=True, input_size=224, depth=_depth)
register("se_resnet50", resnet, "resnet_imagenet", slow=True, input_size=224, depth=50, se_ratio=16)
register("resnext50_32x4d", resnet, "resnext", slow=True, input_size=224, depth=50, groups=32, width_per_group=4)
register("se_resnext50_32x4d", resnet, "resnext", slow=True, input_size=224, depth=50, groups=32,
         width_per_group=4, se_ratio=16)
