"""Pre-activation ResNets for CIFAR (He et al., "Identity Mappings in Deep Residual Networks",
2016): BN-ReLU-conv units, identity shortcuts, projections from the pre-activated input.
ResNet-110 uses basic units (widths 16/32/64, 6n+2 layers), 164 and 1001 bottleneck units
(inner widths 16/32/64, outputs x4, 9n+2 layers): 1.7M and 10.2M parameters.

`k` widens every stage as in Wide ResNets (Zagoruyko & Komodakis 2016), so SE-WRN-28-10 is
the same builder with k=10, dropout between the convs and SE in every unit."""
import keras

from kclassify.models.blocks import ResidualStyle, bn_act, classifier_head, conv, model_input, residual_stages
from kclassify.models.registry import register


def preact_resnet(depth, num_classes, input_shape, mean=None, std=None, bn_momentum=0.9, bottleneck=False,
                  k=1, se_ratio=0, activation="relu", block_dropout=0.0, drop_path_rate=0.0,
                  drop_block=None, pooling="avg", dropout=0.0):
    """Pre-activation ResNet of `depth` (6n+2 basic, 9n+2 bottleneck), stage widths x `k`;
    `block_dropout` is the rate between convolutions (WRN uses 0.3), `dropout` the head's."""
    per_block = 9 if bottleneck else 6
    if (depth - 2) % per_block:
        raise ValueError(f"pre-activation ResNet depth must be {per_block}n+2, got {depth}")
    n = (depth - 2) // per_block
    expansion = 4 if bottleneck else 1
    stages = [(n, 16 * k * 2 ** i * expansion, 16 * k * 2 ** i, 1 if i == 0 else 2) for i in range(3)]
    style = ResidualStyle(bottleneck=bottleneck, preact=True, se_ratio=se_ratio, act=activation,
                          dropout=block_dropout)
    inputs, x = model_input(input_shape, mean, std)
    x = conv(x, 16, 3, 1, "stem")
    x = residual_stages(x, stages, style, bn_momentum, drop_path_rate, drop_block)
    x = bn_act(x, "head_pre", bn_momentum, activation)
    outputs = classifier_head(x, num_classes, dropout=dropout, pooling=pooling)
    return keras.Model(inputs, outputs, name=f"preact_resnet{depth}" + (f"_{k}" if k > 1 else ""))


def se_wide_resnet(depth, k, num_classes, input_shape, se_ratio=16, **options):
    """SE-WRN-depth-k: depth counts as in the WRN paper (6n+4, projections included)."""
    if (depth - 4) % 6:
        raise ValueError(f"WRN depth must be 6n+4, got {depth}")
    model = preact_resnet(depth - 2, num_classes, input_shape, k=k, se_ratio=se_ratio, **options)
    return keras.Model(model.input, model.output, name=f"se_wrn{depth}_{k}")


register("preact_resnet110", preact_resnet, "preact_resnet", slow=True, depth=110)
register("preact_resnet164", preact_resnet, "preact_resnet", slow=True, depth=164, bottleneck=True)
register("preact_resnet1001", preact_resnet, "preact_resnet", slow=True, depth=1001, bottleneck=True)
register("se_wrn28_10", se_wide_resnet, "wide_resnet", slow=True, params_of=preact_resnet, depth=28, k=10)
register("se_wrn16_4", se_wide_resnet, "wide_resnet", slow=True, params_of=preact_resnet, depth=16, k=4)
