"""Keras -> .tflite in any mode of the table (modes.py). Builtins only unless Flex is allowed.
The file takes raw pixels: normalization (and any upscaling) is inside the model.

`configure` is the one converter set-up (also used by the QAT worker on its tf_keras model);
`Quantizer` calibrates a model once and then quantizes it with any set of ops kept in float
(`--float-layers`, the int8-xnnpack mode and the max-drop search all go through it)."""
import re
from contextlib import nullcontext

import numpy as np
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from kclassify.errors import ExportError
from kclassify.runtime import quiet_conversion
from kclassify.tflite.bias_correction import bias_corrected
from kclassify.tflite.modes import MODES, get_mode  # noqa: F401 (MODES re-exported)


def make_converter(model, mode, calibration=None, allow_flex=False, bias_correction=True):
    """A TFLiteConverter set up for `mode` (a name from the modes table). In a calibrated mode the
    frozen graph carries biases corrected for the int8 weights' rounding (bias_correction.py)
    unless `bias_correction` is False; the Keras model itself is left as it was."""
    spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.float32, name="pixels")
    fn = tf.function(lambda x: model(x, training=False), input_signature=[spec])
    correct = bias_correction and get_mode(mode).calibrate and calibration is not None
    with bias_corrected(model, calibration, get_mode(mode).per_channel) if correct else nullcontext():
        # Freeze variables into constants: calibration of a function that reads resource
        # variables fails inside the converter (READ_VARIABLE "variable != nullptr").
        frozen = convert_variables_to_constants_v2(fn.get_concrete_function())
    with quiet_conversion():
        converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
    return configure(converter, mode, calibration, allow_flex)


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


def convert(model, mode, calibration=None, allow_flex=False, float_layers=None, bias_correction=True):
    """Convert `model` in quantization `mode`; returns the .tflite bytes. `float_layers` (a
    regex on the converted graph's tensor names, which carry the Keras layer names) keeps the
    matching ops in float."""
    try:
        if float_layers or get_mode(mode).float_ops:
            quantizer = Quantizer(model, mode, calibration, bias_correction)
            return quantizer.quantize(quantizer.matching(float_layers) if float_layers else ())
        with quiet_conversion():
            return make_converter(model, mode, calibration, allow_flex, bias_correction).convert()
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(describe_failure(str(exc))) from None


class Quantizer:
    """A model calibrated once (TFLite's quantization debugger holds the calibrated model), then
    quantized as often as needed with chosen ops left in float: each `quantize` call costs a
    fraction of a second, where a fresh conversion re-runs the calibration."""

    def __init__(self, model, mode, calibration, bias_correction=True):
        self.mode = get_mode(mode)
        if not self.mode.calibrate:
            raise ExportError(f"keeping layers in float applies to calibrated modes (int8, 16x8...), not {mode}")
        self.calibration, self.bias_correction = calibration, bias_correction
        with quiet_conversion():
            self.debugger = tf.lite.experimental.QuantizationDebugger(
                converter=make_converter(model, mode, calibration, bias_correction=bias_correction),
                debug_dataset=representative(calibration))

    @property
    def nodes(self):
        """The quantized ops' output tensor names (the names the converter's denylist takes):
        the debugger's own reading of its NumericVerify names, as in its statistics dump (the
        debug model appends a digit to each quantized tensor's name; the denylist wants the
        calibrated model's name)."""
        details = self.debugger._get_numeric_verify_tensor_details()
        return [self.debugger._get_operand_name_and_index(d["name"])[0] for d in details]

    def matching(self, pattern):
        """The quantized ops whose names match the regex `pattern`; ExportError if none does."""
        regex = re.compile(pattern)
        names = self.nodes
        chosen = [n for n in names if regex.search(n)]
        if not chosen:
            sample = ", ".join(sorted({layer_label(n) for n in names})[:8])
            raise ExportError(f"--float-layers {pattern!r} matches no quantized layer (some layers: {sample})")
        return chosen

    def quantize(self, float_nodes=()):
        """The .tflite bytes with `float_nodes` (and every op of a type in the mode's float_ops)
        left in float (dequantize before, quantize after). Input/output take the mode's types
        where the graph's ends are quantized, else stay float32."""

        options = tf.lite.experimental.QuantizationDebugOptions(
            denylisted_nodes=list(float_nodes) or None, denylisted_ops=list(self.mode.float_ops) or None)
        with quiet_conversion():
            self.debugger._debug_options = options  # the setter would rebuild the debug model: not needed
            blob = self.debugger.get_nondebug_quantized_model()
        try:
            from tensorflow.lite.python.util import modify_model_io_type

            return bytes(modify_model_io_type(blob, getattr(tf, self.mode.input_type),
                                              getattr(tf, self.mode.output_type)))
        except Exception:  # an end of the graph left in float: the file keeps float32 there
            return bytes(blob)


def layer_label(tensor):
    """The Keras layer in a converted tensor's name: the innermost scope Keras suffixed with _1
    when tracing ('model_1/backbone_1/conv_pw_13_relu_1/Relu6' -> 'conv_pw_13_relu',
    'resnet20_1/stage1_conv_1/convolution' -> 'stage1_conv')."""
    parts = tensor.split(";")[0].split("/")
    scopes = [p[:-2] for p in parts[:-1] if p.endswith("_1")]
    return scopes[-1] if scopes else parts[0]


def describe_failure(message):
    ops = sorted(set(re.findall(r"\b(tf\.[A-Za-z0-9_]+)", message)))
    if ops:
        return (f"TFLite conversion needs op(s) that are not TFLite builtins: {', '.join(ops)}. "
                "Replace the layer that produces them (a device runtime without Flex cannot run it), "
                "or pass --allow-flex if the target links the Flex delegate.")
    return f"TFLite conversion failed: {message.strip().splitlines()[-1][:300]}"
