"""ResNet-9 of the DAWNBench CIFAR-10 entry (D. Page, "How to train your ResNet", 2018):
prep conv, three conv-pool layers, residual pairs after the first and third, max-pooled head.
At full width (64) it reaches 94% on CIFAR-10 in 24 epochs; a narrower `width` trades accuracy
for CPU time and is the fastest way to 80%+ on a 2-core laptop."""
import keras
from keras import layers

from kclassify.models.blocks import conv_bn, model_input
from kclassify.models.registry import register


def _conv_pool_res(x, filters, name, bn_momentum, residual):
    x = conv_bn(x, filters, 3, 1, f"{name}_conv", bn_momentum)
    x = layers.MaxPooling2D(2, name=f"{name}_pool")(x)
    if residual:
        y = conv_bn(x, filters, 3, 1, f"{name}_res1", bn_momentum)
        y = conv_bn(y, filters, 3, 1, f"{name}_res2", bn_momentum)
        x = layers.Add(name=f"{name}_add")([x, y])
    return x


def resnet9(num_classes, input_shape, mean=None, std=None, bn_momentum=0.9, width=64, dropout=0.0,
            logit_scale=0.125):
    """ResNet-9 with base width `width` (stages width, 2w, 4w, 8w). Logits are scaled by
    `logit_scale` (Page's 0.125): max-pooled features are large and unscaled logits make the
    first, high-learning-rate epoch unstable."""
    inputs, x = model_input(input_shape, mean, std)
    x = conv_bn(x, width, 3, 1, "stem", bn_momentum)
    for stage, (mult, residual) in enumerate([(2, True), (4, False), (8, True)], start=1):
        x = _conv_pool_res(x, width * mult, f"stage{stage}", bn_momentum, residual)
    x = layers.GlobalMaxPooling2D(name="head_pool")(x)
    if dropout:
        x = layers.Dropout(dropout, name="head_dropout")(x)
    x = layers.Dense(num_classes, name="head_dense")(x)
    if logit_scale:
        x = layers.Rescaling(logit_scale, name="head_scale")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="predictions")(x)
    return keras.Model(inputs, outputs, name="resnet9")


register("resnet9", resnet9, "resnet9")
