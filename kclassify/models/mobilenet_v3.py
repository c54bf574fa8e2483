"""MobileNetV3 (Howard et al. 2019), Tables 1 and 2: inverted residuals with the paper's kernel,
expansion, SE and ReLU/hard-swish per row; 1x1 conv to 6x the last width, pooled, a 1280
(Large) / 1024 (Small) hard-swish dense layer, dropout, logits. Large 1.0 has 5,483,032
parameters and 219M MACs at 224x224, Small 1.0 2,542,856 and 56M (torchvision's counts).
`width_mult` scales every layer (rounded to multiples of 8, as the reference); `cifar_stem` makes
the stem stride 1 so a 32x32 image keeps enough resolution."""
import keras

from kclassify.models.blocks import classifier_head, conv_bn, inverted_residual, make_divisible, model_input
from kclassify.models.registry import register

# kernel, expanded channels, output channels, SE, activation, stride
LARGE = [(3, 16, 16, False, "relu", 1), (3, 64, 24, False, "relu", 2), (3, 72, 24, False, "relu", 1),
         (5, 72, 40, True, "relu", 2), (5, 120, 40, True, "relu", 1), (5, 120, 40, True, "relu", 1),
         (3, 240, 80, False, "hard_swish", 2), (3, 200, 80, False, "hard_swish", 1),
         (3, 184, 80, False, "hard_swish", 1), (3, 184, 80, False, "hard_swish", 1),
         (3, 480, 112, True, "hard_swish", 1), (3, 672, 112, True, "hard_swish", 1),
         (5, 672, 160, True, "hard_swish", 2), (5, 960, 160, True, "hard_swish", 1),
         (5, 960, 160, True, "hard_swish", 1)]
SMALL = [(3, 16, 16, True, "relu", 2), (3, 72, 24, False, "relu", 2), (3, 88, 24, False, "relu", 1),
         (5, 96, 40, True, "hard_swish", 2), (5, 240, 40, True, "hard_swish", 1),
         (5, 240, 40, True, "hard_swish", 1), (5, 120, 48, True, "hard_swish", 1),
         (5, 144, 48, True, "hard_swish", 1), (5, 288, 96, True, "hard_swish", 2),
         (5, 576, 96, True, "hard_swish", 1), (5, 576, 96, True, "hard_swish", 1)]
TABLES = {"large": (LARGE, 1280), "small": (SMALL, 1024)}


def mobilenet_v3(num_classes, input_shape, mean=None, std=None, bn_momentum=0.9, size="large", width_mult=1.0,
                 cifar_stem=False, zero_gamma=False, drop_path_rate=0.0, pooling="avg", dropout=0.2):
    """MobileNetV3-`size` ("large" or "small") at width multiplier `width_mult`."""
    table, last = TABLES[size]
    inputs, x = model_input(input_shape, mean, std)
    x = conv_bn(x, make_divisible(16 * width_mult), 3, 1 if cifar_stem else 2, "stem", bn_momentum, act="hard_swish")
    stage, block = 1, 0
    for i, (kernel, expanded, out, se, act, stride) in enumerate(table):
        if stride == 2 and block:  # a new resolution opens a new stage
            stage, block = stage + 1, 0
        block += 1
        x = inverted_residual(x, make_divisible(out * width_mult), make_divisible(expanded * width_mult), kernel, stride,
                              f"stage{stage}_block{block}", bn_momentum, act=act, se=se,
                              zero_gamma=zero_gamma, drop_rate=drop_path_rate * (i + 1) / len(table))
    x = conv_bn(x, make_divisible(6 * table[-1][2] * width_mult), 1, 1, "head_expand", bn_momentum, act="hard_swish")
    outputs = classifier_head(x, num_classes, dropout=dropout, pooling=pooling,
                              hidden=(make_divisible(last * width_mult),), act="hard_swish")
    return keras.Model(inputs, outputs, name=f"mobilenet_v3_{size}")


register("mobilenet_v3_large", mobilenet_v3, "mobilenet_v3", slow=True, input_size=224, size="large")
register("mobilenet_v3_small", mobilenet_v3, "mobilenet_v3", slow=True, input_size=224, size="small")
