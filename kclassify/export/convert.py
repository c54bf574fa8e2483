"""Keras -> builtins-only .tflite. The file takes raw pixels: normalization is in the model."""
import re

import numpy as np

from kclassify.errors import ExportError

MODES = ("float32", "float16", "dynamic", "int8")


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


def convert(model, mode, calibration=None):
    """Convert `model` in quantization `mode`; returns the .tflite bytes (builtins only)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    if mode not in MODES:
        raise ExportError(f"unknown quantization mode {mode!r}; choose from {', '.join(MODES)}")
    spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.float32, name="pixels")
    fn = tf.function(lambda x: model(x, training=False), input_signature=[spec])
    # Freeze variables into constants: calibration of a function that reads resource
    # variables fails inside the converter (READ_VARIABLE "variable != nullptr").
    frozen = convert_variables_to_constants_v2(fn.get_concrete_function())
    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if mode != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if mode == "int8":
        if calibration is None:
            raise ExportError("int8 needs calibration images")

        def representative():
            for image in calibration:
                yield [image[None].astype(np.float32)]

        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.float32
    try:
        return converter.convert()
    except Exception as exc:
        raise ExportError(describe_failure(str(exc))) from None


def describe_failure(message):
    ops = sorted(set(re.findall(r"\b(tf\.[A-Za-z0-9_]+)", message)))
    if ops:
        return (f"TFLite conversion needs op(s) that are not TFLite builtins: {', '.join(ops)}. "
                "Replace the layer that produces them (a device runtime without Flex cannot run it).")
    return f"TFLite conversion failed: {message.strip().splitlines()[-1][:300]}"
