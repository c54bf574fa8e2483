"""DenseNets (Huang et al. 2017). DenseNet-BC for CIFAR: a 3x3 stem of 2k channels, three dense
blocks of (depth-4)/6 bottleneck layers, transitions halving channels (compression 0.5):
BC-100 with k=12 has 0.8M parameters, BC-190 with k=40 25.6M. ImageNet DenseNet-121/201:
7x7/2 stem and max pool, blocks of 6-12-24-16 / 6-12-48-32 layers, k=32 (8.0M / 20.0M)."""
import keras
from keras import layers

from kclassify.models.blocks import bn_act, classifier_head, conv, conv_bn, dense_block, model_input
from kclassify.models.registry import register

IMAGENET_BLOCKS = {121: (6, 12, 24, 16), 169: (6, 12, 32, 32), 201: (6, 12, 48, 32)}


def _transition(x, compression, name, bn_momentum, act):
    x = conv(bn_act(x, name, bn_momentum, act), int(x.shape[-1] * compression), 1, 1, name)
    return layers.AveragePooling2D(2, strides=2, padding="same", name=f"{name}_pool")(x)


def densenet(depth, num_classes, input_shape, mean=None, std=None, bn_momentum=0.9, growth_rate=32,
             cifar_stem=False, compression=0.5, activation="relu", drop_block=None, pooling="avg", dropout=0.0):
    """DenseNet(-BC) of `depth`: 121/169/201 use the ImageNet tables, any other depth is the
    CIFAR DenseNet-BC with three blocks of (depth-4)/6 layers (cifar_stem should then be True)."""
    if depth in IMAGENET_BLOCKS:
        blocks = IMAGENET_BLOCKS[depth]
    elif (depth - 4) % 6 == 0:
        blocks = ((depth - 4) // 6,) * 3
    else:
        raise ValueError(f"DenseNet depth must be one of {sorted(IMAGENET_BLOCKS)} or 6n+4, got {depth}")
    inputs, x = model_input(input_shape, mean, std)
    if cifar_stem:  # a plain conv: every dense layer starts with its own BN-ReLU
        x = conv(x, 2 * growth_rate, 3, 1, "stem")
    else:
        x = conv_bn(x, 2 * growth_rate, 7, 2, "stem", bn_momentum, act=activation)
        x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for stage, count in enumerate(blocks, start=1):
        hook = drop_block if stage >= len(blocks) - 1 else None
        x = dense_block(x, count, growth_rate, f"stage{stage}", bn_momentum, act=activation, drop_block=hook)
        if stage < len(blocks):
            x = _transition(x, compression, f"stage{stage}_transition", bn_momentum, activation)
    x = bn_act(x, "head_pre", bn_momentum, activation)
    outputs = classifier_head(x, num_classes, dropout=dropout, pooling=pooling)
    return keras.Model(inputs, outputs, name=f"densenet{depth}")


register("densenet100_bc_k12", densenet, "densenet", slow=True, depth=100, growth_rate=12, cifar_stem=True)
register("densenet190_bc_k40", densenet, "densenet", slow=True, depth=190, growth_rate=40, cifar_stem=True)
register("densenet121", densenet, "densenet", slow=True, input_size=224, depth=121)
register("densenet201", densenet, "densenet", slow=True, input_size=224, depth=201)
