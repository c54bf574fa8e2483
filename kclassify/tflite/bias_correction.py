"""Bias correction for int8 weights (Nagel et al. 2019, "Data-Free Quantization Through Weight
Equalization and Bias Correction", section 4.2).

Rounding a layer's weights to int8 moves the mean of its outputs: E[W_q x] - E[W x] = (W_q - W) E[x].
The error is systematic, not noise, so it adds up through the network; in a fine-tuned MobileNet
0.25 (clothing photos) it moved the last pointwise convolution's outputs by up to 1.9 (in ReLU6
units) and, with the other layers, flipped 5.2% of unseen images against 2.2% once corrected
(benchmarks/RESULTS.md, 2026-12-07). The correction subtracts that shift from the layer's bias,
which the converter then folds in with the rest.

The paper derives E[x] from the previous BatchNorm's statistics; here it is measured on the
calibration images, per kernel tap so that zero padding at the borders counts (the images the converter calibrates on: unaugmented training images), which
needs no labels. Each convolution's weights are quantized the way the converter does it after
folding a following BatchNorm into them: symmetric, [-127, 127], one scale per output channel
(per tensor in a per-tensor mode). Dense layers are left alone: the head's error is one layer's,
not an accumulated one, and the converter's fully-connected scales differ by version.

`bias_corrected(model, images)` is a context manager: inside it the model's BatchNorm betas (or
the convolutions' own biases) hold the corrected values, so a converter built inside it freezes
them; on leaving, the float model is exactly what it was.
"""
from contextlib import contextmanager

import keras
import numpy as np

BATCH = 32


@contextmanager
def bias_corrected(model, images, per_channel=True, skip=()):
    """The model with its quantization-corrected biases (but for the layers named in `skip`) for
    the duration of the block."""
    shifts = corrections(model, images, per_channel, skip)
    saved = [(var, np.array(var.numpy())) for var, _ in shifts.values()]
    try:
        for var, delta in shifts.values():
            var.assign(var.numpy() - delta)
        yield
    finally:
        for var, value in saved:
            var.assign(value)


def corrections(model, images, per_channel=True, skip=()):
    """{layer name: (bias variable, expected output shift)} for every correctable convolution
    not named in `skip`."""
    targets = [t for t in _targets(model) if t[0].name not in skip]
    means = input_means(model, images, [layer for layer, _, _ in targets])
    return {layer.name: (bias, _shift(layer, scale, means[id(layer)], per_channel))
            for layer, bias, scale in targets}


def corrected_layers(model):
    """The layers the correction applies to."""
    return [layer for layer, _, _ in _targets(model)]


def _targets(model):
    return [t for t in map(_target, _layers(model)) if t is not None]


def _layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _layers(layer)


def _target(layer):
    """(layer, bias variable, per-output-channel factor a following BatchNorm multiplies it by)
    for a convolution the correction applies to, else None."""
    if not isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)) or len(layer._inbound_nodes) != 1:
        return None
    if isinstance(layer, keras.layers.Conv2D) and getattr(layer, "groups", 1) != 1:
        return None
    consumers = layer._outbound_nodes
    if len(consumers) == 1 and isinstance(consumers[0].operation, keras.layers.BatchNormalization):
        bn = consumers[0].operation
        if bn.center and not layer.use_bias and int(bn.axis if isinstance(bn.axis, int) else bn.axis[0]) in (-1, 3):
            gamma = bn.gamma.numpy() if bn.scale else 1.0
            return layer, bn.beta, gamma / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
        return None
    return (layer, layer.bias, 1.0) if layer.use_bias else None


def _shift(layer, scale, taps, per_channel):
    """Expected output shift (per output channel, after the BatchNorm's scale) of int8 weights;
    `taps` (h, w, in): the mean input each kernel tap reads (tap_means)."""
    kernel = layer.kernel.numpy()
    if isinstance(layer, keras.layers.DepthwiseConv2D):  # (h, w, in, multiplier): output i*m + j
        folded = kernel * np.reshape(scale, (1, 1, *kernel.shape[2:])) if np.ndim(scale) else kernel * scale
        error = _rounding_error(folded, (0, 1) if per_channel else (0, 1, 2, 3))
        return np.einsum("hwim,hwi->im", error, taps).reshape(-1)
    folded = kernel * scale
    error = _rounding_error(folded, (0, 1, 2) if per_channel else (0, 1, 2, 3))
    return np.einsum("hwio,hwi->o", error, taps)


def _rounding_error(weights, axes):
    """int8 weights minus float weights: symmetric scales max|w| / 127 over `axes`."""
    step = np.abs(weights).max(axis=axes, keepdims=True) / 127.0
    step = np.where(step > 0, step, 1.0)
    return np.clip(np.round(weights / step), -127, 127) * step - weights


def input_means(model, images, layers):
    """{id(layer): the mean input of each kernel tap (tap_means)} over `images` (uint8, the model's input),
    through nested models: each functional model gets one probe with its targets' inputs and its
    nested models' inputs as outputs."""
    wanted = {id(layer) for layer in layers}
    sums, count = {}, 0
    probes = {}
    for start in range(0, len(images), BATCH):
        batch = np.asarray(images[start:start + BATCH], np.float32)
        _accumulate(model, batch, wanted, probes, sums)
        count += 1
    return {key: total / count for key, total in sums.items()}


def _accumulate(model, inputs, wanted, probes, sums):
    if id(model) not in probes:
        direct = [layer for layer in model.layers if id(layer) in wanted]
        nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
        outputs = [layer.input for layer in direct] + [layer._inbound_nodes[0].input_tensors[0] for layer in nested]
        entry = model.inputs if len(model.inputs) > 1 else model.inputs[0]  # the structure the model was built with
        probes[id(model)] = (keras.Model(entry, outputs) if outputs else None, direct, nested)
    probe, direct, nested = probes[id(model)]
    if probe is None:
        return
    values = probe(inputs, training=False)
    values = values if isinstance(values, (list, tuple)) else [values]
    for layer, value in zip(direct, values):
        sums[id(layer)] = sums.get(id(layer), 0.0) + tap_means(layer, np.asarray(value))
    for layer, value in zip(nested, values[len(direct):]):
        _accumulate(layer, np.asarray(value), wanted, probes, sums)


def tap_means(layer, inputs):
    """(kernel h, kernel w, channels): the mean, over the batch and the output positions, of the
    input each kernel tap multiplies, zero padding included: at the borders of a 'same'
    convolution some taps read padding, so a plain per-channel mean over-corrects small maps."""
    kh, kw = layer.kernel_size
    (sh, sw), (dh, dw) = layer.strides, layer.dilation_rate
    _, h, w, _ = inputs.shape
    out_h, out_w = _out_size(h, kh, sh, dh, layer.padding), _out_size(w, kw, sw, dw, layer.padding)
    pad_h, pad_w = _pad_before(h, out_h, kh, sh, dh, layer.padding), _pad_before(w, out_w, kw, sw, dw, layer.padding)
    span_h, span_w = (out_h - 1) * sh + (kh - 1) * dh + 1, (out_w - 1) * sw + (kw - 1) * dw + 1
    padded = np.pad(inputs, ((0, 0), (pad_h, max(span_h - h - pad_h, 0)), (pad_w, max(span_w - w - pad_w, 0)), (0, 0)))
    means = np.empty((kh, kw, inputs.shape[-1]))
    for i in range(kh):
        for j in range(kw):
            window = padded[:, i * dh:i * dh + (out_h - 1) * sh + 1:sh, j * dw:j * dw + (out_w - 1) * sw + 1:sw]
            means[i, j] = window.mean(axis=(0, 1, 2))
    return means


def _out_size(size, kernel, stride, dilation, padding):
    return -(-size // stride) if padding == "same" else (size - (kernel - 1) * dilation - 1) // stride + 1


def _pad_before(size, out, kernel, stride, dilation, padding):
    """TensorFlow's 'same' padding puts the smaller half before."""
    return max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0) // 2 if padding == "same" else 0
