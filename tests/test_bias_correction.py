"""Bias correction (kclassify/tflite/bias_correction.py): the int8 file's systematic output shift,
measured in LiteRT, shrinks; the float model is left exactly as it was."""
import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")

SIZE, FILTERS = 8, 6


def shifted_model(kind, nested):
    """pixels -> [conv (kind)] -> global average: the file's output is each filter's mean, so its
    error against float is the mean shift the int8 weights add (activation rounding averages out).
    Every weight but one outlier per filter sits 0.4 of an int8 step above a step, so rounding
    lowers each by the same 0.4 step: with positive inputs, a systematic shift."""
    import keras

    pixels = keras.Input((SIZE, SIZE, 3), name="pixels")
    inner = keras.Input((SIZE, SIZE, 3), name="inner") if nested else None
    x = keras.layers.Rescaling(1 / 255.0, name="scale")(inner if nested else pixels)
    if kind == "depthwise_bn":
        conv = keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, use_bias=False, name="conv")
    else:
        conv = keras.layers.Conv2D(FILTERS, 3, padding="same", use_bias=kind == "conv_bias", name="conv")
    x = conv(x)
    bn = None
    if kind.endswith("_bn"):
        bn = keras.layers.BatchNormalization(name="bn")
        x = bn(x)
    if nested:
        x = keras.Model(inner, x, name="backbone")(keras.layers.Identity(name="pre")(pixels))
    model = keras.Model(pixels, keras.layers.GlobalAveragePooling2D(name="mean")(x), name="shifted")
    kernel = np.asarray(conv.kernel)
    outputs = kernel.shape[2] * kernel.shape[3] if kind == "depthwise_bn" else kernel.shape[3]
    step = 1.0 / 127  # the outlier 1.0 sets each output channel's int8 step
    values = (np.arange(kernel.size) % 7 + 0.4) * step
    kernel = values.reshape(kernel.shape).astype(np.float32)
    flat = kernel.reshape(-1, outputs)
    flat[0] = 1.0
    conv.kernel.assign(flat.reshape(kernel.shape))
    if bn is not None:  # folded into the weights by the converter: the correction must fold it too
        rng = np.random.default_rng(1)
        bn.set_weights([rng.uniform(0.5, 2.0, outputs).astype(np.float32), rng.uniform(-0.2, 0.2, outputs).astype(np.float32),
                        rng.uniform(0.0, 0.5, outputs).astype(np.float32), rng.uniform(0.5, 2.0, outputs).astype(np.float32)])
    return model


@pytest.mark.parametrize("kind,nested", [("conv_bias", False), ("conv_bn", False), ("depthwise_bn", False),
                                         ("conv_bn", True)])
def test_the_int8_files_mean_shift_shrinks_and_the_float_model_is_untouched(kind, nested, tmp_path):
    from kclassify.kit import kitlib
    from kclassify.tflite.convert import convert

    model = shifted_model(kind, nested)
    before = [np.array(w) for w in model.get_weights()]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (200, SIZE, SIZE, 3), dtype=np.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255  # pin the input range to 0..255 as kclassify's calibration does
    reference = np.asarray(model.predict(images.astype(np.float32), verbose=0))
    errors = {}
    for corrected in (False, True):
        path = tmp_path / f"{corrected}.tflite"
        path.write_bytes(convert(model, "int8", images, bias_correction=corrected))
        errors[corrected] = np.abs((kitlib.Classifier(path).predict(images) - reference).mean(0))
    for now, then in zip(model.get_weights(), before):
        np.testing.assert_array_equal(now, then)
    assert errors[False].max() > 20 * errors[True].max(), errors  # 340-410x on this box


def test_a_layer_left_in_float_keeps_its_trained_bias(tmp_path):
    """The max-drop search floats layers: a floated layer has no int8 weights to compensate, so its
    corrected bias would shift it the other way; the file with the convolution in float matches
    the float model as closely as the corrected int8 file does."""
    from kclassify.kit import kitlib
    from kclassify.tflite.convert import Quantizer

    model = shifted_model("conv_bn", nested=True)
    images = np.random.default_rng(0).integers(0, 256, (200, SIZE, SIZE, 3), dtype=np.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255
    reference = np.asarray(model.predict(images.astype(np.float32), verbose=0))
    quantizer = Quantizer(model, "int8", images)
    conv_ops = quantizer.matching("conv_1/")
    errors = {}
    for name, floated in (("int8", []), ("conv in float", conv_ops), ("int8 again", [])):
        path = tmp_path / f"{len(errors)}.tflite"
        path.write_bytes(quantizer.quantize(floated))
        errors[name] = np.abs((kitlib.Classifier(path).predict(images) - reference).mean(0)).max()
    assert errors["conv in float"] < 0.003 and errors["int8"] < 0.003, errors  # the shift uncorrected: 0.04-0.07
    assert errors["int8 again"] == errors["int8"]  # the base calibration is kept, not replaced


def test_layers_it_cannot_correct_are_left_alone():
    """A convolution followed by something other than BatchNorm and without a bias, and Dense
    layers, get no correction; a convolution feeding BatchNorm corrects the BatchNorm's beta."""
    import keras

    from kclassify.tflite.bias_correction import corrections

    pixels = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(4, 3, use_bias=False, name="plain")(pixels)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(4, 1, use_bias=False, name="with_bn")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Dense(3, name="dense")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(pixels, x)
    found = corrections(model, np.full((4, SIZE, SIZE, 3), 100, np.uint8))
    assert list(found) == ["with_bn"] and found["with_bn"][0] is model.get_layer("bn").beta
