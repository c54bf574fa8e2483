"""The option-A shortcut of He et al. (2016) as one layer: subsample by `stride`, then zero-pad
the channels up to `filters` (half the new channels before, half after).

It is computed as a 1x1 convolution with a fixed 0/1 kernel, which gives exactly the same
numbers as slicing and padding but becomes one CONV_2D in TFLite: the XNNPACK delegate takes it
in float and int8 alike (the 1 is exact under per-channel int8 weights). The stock-layer version
(1x1 max pool, reshape to 5-D, 3-D zero padding, reshape back) left 18 ops outside XNNPACK in
ResNet-20 and split it into 6 partitions. No weights: parameter counts stay the paper's.
"""
import keras
import numpy as np
from keras import ops


@keras.saving.register_keras_serializable(package="kclassify")
class PadShortcut(keras.layers.Layer):
    def __init__(self, filters, stride=1, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.stride = int(filters), int(stride)

    def build(self, input_shape):
        channels = int(input_shape[-1])
        if channels > self.filters:
            raise ValueError(f"PadShortcut cannot shrink {channels} channels to {self.filters}")
        kernel = np.zeros((1, 1, channels, self.filters), np.float32)
        first = (self.filters - channels) // 2
        kernel[0, 0, np.arange(channels), first + np.arange(channels)] = 1.0
        self.kernel = kernel

    def call(self, x):
        kernel = ops.cast(ops.convert_to_tensor(self.kernel), x.dtype)
        return ops.conv(x, kernel, strides=self.stride, padding="valid")

    def compute_output_shape(self, input_shape):
        n, h, w, _ = input_shape
        cut = lambda d: None if d is None else (d - 1) // self.stride + 1
        return (n, cut(h), cut(w), self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "stride": self.stride}
