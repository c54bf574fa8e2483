"""The one converter set-up: op set, optimizations, weight types, per-channel scales, calibration
images and the file's input/output types of a mode. Apart from convert.py because the QAT worker
(a tf_keras process, where Keras 3 must not be imported) configures its converter with it too."""
import numpy as np
import tensorflow as tf

from kclassify.errors import ExportError
from kclassify.tflite.modes import get_mode


def configure(converter, mode, calibration=None, allow_flex=False):
    """Set `converter` up for `mode`: op set, optimizations, weight types, per-channel scales,
    calibration images and the file's input/output types. Returns the converter."""
    mode = get_mode(mode)
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
    """The converter's representative dataset: each image as a float32 batch of one."""
    def gen():
        for image in images:
            yield [image[None].astype(np.float32)]
    return gen
