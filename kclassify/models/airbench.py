"""The airbench networks (K. Jordan, "94% on CIFAR-10 in 3.29 seconds on a single GPU", 2024;
github KellerJordan/cifar10-airbench): a frozen 2x2 patch-whitening conv (3 -> 24) + GELU, then
three groups conv-maxpool-BN-GELU-conv-BN-GELU, a global max pool and a bias-free linear head
scaled by 1/9. airbench94 (widths 64/256/256) reaches 94% in 9.9 epochs; airbench93 (64/128/128)
93% in 11, airbench95 (128/384/384) 95% in 15 (2 pixels of translation, lr 10 per 1,024). The
training recipe (whitening from data, Dirac init, frozen BN scale with bias lr x64, lookahead,
alternating flip, TTA) is in recipes/cifar10_airbench94.yaml; the layers are plain."""
import keras
from keras import layers

from kclassify.layers.whitening import PatchWhitening
from kclassify.models.blocks import model_input
from kclassify.models.registry import register

# PyTorch's default conv/linear initialization (kaiming_uniform, a=sqrt(5)): U(+-1/sqrt(fan_in)).
TORCH_INIT = keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform")


def _group(x, width, name, bn_momentum, act):
    for i in (1, 2):
        x = layers.Conv2D(width, 3, padding="same", use_bias=False, kernel_initializer=TORCH_INIT,
                          name=f"{name}_conv{i}")(x)
        if i == 1:
            x = layers.MaxPooling2D(2, name=f"{name}_pool")(x)
        x = layers.BatchNormalization(momentum=bn_momentum, epsilon=1e-12, name=f"{name}_bn{i}")(x)
        x = layers.Activation(act, name=f"{name}_{act}{i}")(x)
    return x


def airbench(num_classes, input_shape, mean=None, std=None, bn_momentum=0.6, widths=(64, 256, 256),
             whiten_kernel=2, act="gelu", logit_scale=1.0 / 9.0, whiten=True, name="airbench"):
    """Airbench network with group `widths`; `act` gelu as published (relu is faster on CPUs).
    whiten=False makes the stem an ordinary trainable conv of the same shape (the ablation)."""
    inputs, x = model_input(input_shape, mean, std)
    channels = input_shape[-1]
    if whiten:
        x = PatchWhitening(whiten_kernel, channels=channels, name="stem_whiten")(x)
    else:
        x = layers.Conv2D(2 * channels * whiten_kernel ** 2, whiten_kernel, kernel_initializer=TORCH_INIT,
                          name="stem_conv")(x)
    x = layers.Activation(act, name=f"stem_{act}")(x)
    for stage, width in enumerate(widths, start=1):
        x = _group(x, int(width), f"stage{stage}", bn_momentum, act)
    x = layers.GlobalMaxPooling2D(name="head_pool")(x)
    x = layers.Dense(num_classes, use_bias=False, kernel_initializer=TORCH_INIT, name="head_dense")(x)
    x = layers.Rescaling(logit_scale, name="head_scale")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="predictions")(x)
    return keras.Model(inputs, outputs, name=name)


register("airbench93", airbench, "airbench", widths=(64, 128, 128), name="airbench93")
register("airbench94", airbench, "airbench", widths=(64, 256, 256), name="airbench94")
register("airbench95", airbench, "airbench", widths=(128, 384, 384), name="airbench95")
