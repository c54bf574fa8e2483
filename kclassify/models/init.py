"""Initializations applied to a built model (recipe `model.init`), for any architecture."""
import keras
import numpy as np


def dirac_init(model):
    """Identity ("Dirac") start for every plain convolution whose input channels fit in its
    output channels: the first in_channels filters pass their own channel through the kernel's
    centre and nothing else (airbench, after torch.nn.init.dirac_); the other filters keep the
    builder's initializer. Depthwise, grouped and even-sized kernels are left alone. Returns how
    many layers were set."""
    done = 0
    for layer in model._flatten_layers(include_self=False):
        if type(layer) is not keras.layers.Conv2D or layer.groups != 1:
            continue
        kh, kw, cin, cout = layer.kernel.shape
        if cin > cout or kh % 2 == 0 or kw % 2 == 0:
            continue
        kernel = layer.kernel.numpy()
        kernel[:, :, :, :cin] = 0.0
        kernel[kh // 2, kw // 2, np.arange(cin), np.arange(cin)] = 1.0
        layer.kernel.assign(kernel)
        done += 1
    return done
