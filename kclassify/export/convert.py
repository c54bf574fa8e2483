"""Keras -> .tflite in any mode of the table (modes.py). Builtins only unless Flex is allowed.
The file takes raw pixels: normalization (and any upscaling) is inside the model."""
import re

import numpy as np

from kclassify.errors import ExportError
from kclassify.export.modes import MODES, get_mode  # noqa: F401 (MODES re-exported)


def calibration_images(split, count, seed=0):
    """Up to `count` unaugmented training images, stratified across classes."""
    rng = np.random.default_rng(seed)
    classes = np.unique(split.labels)
    per = max(count // len(classes), 1)
    idx = np.concatenate([rng.permutation(np.flatnonzero(split.labels == c))[:per] for c in classes])
    images = split.images[rng.permutation(idx)[:count]].copy()
    # One black and one white pixel pin the input range to exactly 0..255, so the uint8 input
    # gets scale 1 and zero point 0: raw camera pixels go in unchanged.
    images[0, 0, 0, :] = 0
    images[0, 0, -1, :] = 255
    return images


def make_converter(model, mode, calibration=None, allow_flex=False):
    """A TFLiteConverter set up for `mode` (a name from the modes table)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    mode = get_mode(mode)
    spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.float32, name="pixels")
    fn = tf.function(lambda x: model(x, training=False), input_signature=[spec])
    # Freeze variables into constants: calibration of a function that reads resource
    # variables fails inside the converter (READ_VARIABLE "variable != nullptr").
    frozen = convert_variables_to_constants_v2(fn.get_concrete_function())
    from kclassify.runtime import quiet_conversion

    with quiet_conversion():
        converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
    ops = {"builtins": tf.lite.OpsSet.TFLITE_BUILTINS, "int8": tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
           "16x8": tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8}
    converter.target_spec.supported_ops = [ops[mode.ops]]
    if mode.ops == "16x8":  # ops with no 16x8 kernel (HARD_SWISH...) fall back to float builtins
        converter.target_spec.supported_ops.append(tf.lite.OpsSet.TFLITE_BUILTINS)
    if allow_flex:
        converter.target_spec.supported_ops += [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    if mode.optimize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode.float16:
        converter.target_spec.supported_types = [tf.float16]
    converter._experimental_disable_per_channel = not mode.per_channel  # the converter's only switch
    if mode.calibrate:
        if calibration is None:
            raise ExportError(f"{mode.name} needs calibration images")
        converter.representative_dataset = representative(calibration)
        converter.inference_input_type = getattr(tf, mode.input_type)
        converter.inference_output_type = getattr(tf, mode.output_type)
    return converter


def representative(images):
    def gen():
        for image in images:
            yield [image[None].astype(np.float32)]
    return gen


def convert(model, mode, calibration=None, allow_flex=False, float_layers=None):
    """Convert `model` in quantization `mode`; returns the .tflite bytes. `float_layers` (a
    regex on the converted graph's tensor names, which carry the Keras layer names) keeps the
    matching ops in float; see debug.py."""
    from kclassify.runtime import quiet_conversion

    converter = make_converter(model, mode, calibration, allow_flex)
    try:
        if float_layers or get_mode(mode).float_ops:
            from kclassify.export.debug import selective_model

            return selective_model(converter, calibration, float_layers, get_mode(mode))
        with quiet_conversion():
            return converter.convert()
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(describe_failure(str(exc))) from None


def describe_failure(message):
    ops = sorted(set(re.findall(r"\b(tf\.[A-Za-z0-9_]+)", message)))
    if ops:
        return (f"TFLite conversion needs op(s) that are not TFLite builtins: {', '.join(ops)}. "
                "Replace the layer that produces them (a device runtime without Flex cannot run it), "
                "or pass --allow-flex if the target links the Flex delegate.")
    return f"TFLite conversion failed: {message.strip().splitlines()[-1][:300]}"
