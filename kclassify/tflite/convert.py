"""Keras -> .tflite in any mode of the table (modes.py). Builtins only unless Flex is allowed.
The file takes raw pixels: normalization (and any upscaling) is inside the model.

`configure` (converter_options.py) is the one converter set-up, shared with the QAT worker;
`Quantizer` calibrates a model once and then quantizes it with any set of ops kept in float
(`--float-layers`, the int8-xnnpack mode and the max-drop search all go through it)."""
import re
from contextlib import nullcontext

import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from kclassify.errors import ExportError
from kclassify.runtime import quiet_conversion
from kclassify.tflite.bias_correction import bias_corrected, corrected_layers
from kclassify.tflite.converter_options import configure, representative
from kclassify.tflite.modes import MODES, get_mode  # noqa: F401 (MODES re-exported)


def make_converter(model, mode, calibration=None, allow_flex=False, bias_correction=True, uncorrected=()):
    """A TFLiteConverter set up for `mode` (a name from the modes table). In a calibrated mode the
    frozen graph carries biases corrected for the int8 weights' rounding (bias_correction.py),
    except the layers named in `uncorrected` (they stay float) or all with `bias_correction`
    False; the Keras model itself is left as it was."""
    spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.float32, name="pixels")
    fn = tf.function(lambda x: model(x, training=False), input_signature=[spec])
    correct = bias_correction and get_mode(mode).calibrate and calibration is not None
    with bias_corrected(model, calibration, get_mode(mode).per_channel, uncorrected) if correct else nullcontext():
        # Freeze variables into constants: calibration of a function that reads resource
        # variables fails inside the converter (READ_VARIABLE "variable != nullptr").
        frozen = convert_variables_to_constants_v2(fn.get_concrete_function())
    with quiet_conversion():
        converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
    return configure(converter, mode, calibration, allow_flex)


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
    fraction of a second, where a fresh conversion re-runs the calibration.

    A layer left in float must keep its trained bias (the corrected one compensates int8 weights
    it no longer has: floating a corrected layer raised the flips, measured): a set of float ops
    that holds corrected layers gets a calibration of its own, made once per set."""

    def __init__(self, model, mode, calibration, bias_correction=True):
        self.mode = get_mode(mode)
        if not self.mode.calibrate:
            raise ExportError(f"keeping layers in float applies to calibrated modes (int8, 16x8...), not {mode}")
        self.model, self.calibration, self.bias_correction = model, calibration, bias_correction
        self.debugger = self._calibrated(())
        self._variants = {frozenset(): self.debugger}

    def _calibrated(self, uncorrected):
        with quiet_conversion():
            return tf.lite.experimental.QuantizationDebugger(
                converter=make_converter(self.model, self.mode.name, self.calibration,
                                         bias_correction=self.bias_correction, uncorrected=uncorrected),
                debug_dataset=representative(self.calibration))

    def _debugger_for(self, float_nodes):
        """The calibrated model whose float ops keep their trained biases."""
        if not self.bias_correction:
            return self.debugger
        uncorrected = frozenset(scope for node in float_nodes for scope in layer_scopes(node))
        uncorrected &= frozenset(layer.name for layer in corrected_layers(self.model))
        if uncorrected not in self._variants:
            variant = self._calibrated(uncorrected)
            if not set(float_nodes) <= set(_node_names(variant)):  # the denylist would float nothing, silently
                raise ExportError("the recalibrated graph names its ops differently; export with --no-bias-correction")
            self._variants[uncorrected] = variant
        return self._variants[uncorrected]

    @property
    def nodes(self):
        """The quantized ops' output tensor names (the names the converter's denylist takes):
        the debugger's own reading of its NumericVerify names, as in its statistics dump (the
        debug model appends a digit to each quantized tensor's name; the denylist wants the
        calibrated model's name)."""
        return _node_names(self.debugger)

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
        debugger = self._debugger_for(float_nodes)
        with quiet_conversion():
            debugger._debug_options = options  # the setter would rebuild the debug model: not needed
            blob = debugger.get_nondebug_quantized_model()
        try:
            from tensorflow.lite.python.util import modify_model_io_type

            return bytes(modify_model_io_type(blob, getattr(tf, self.mode.input_type),
                                              getattr(tf, self.mode.output_type)))
        except Exception:  # an end of the graph left in float: the file keeps float32 there
            return bytes(blob)


def _node_names(debugger):
    details = debugger._get_numeric_verify_tensor_details()
    return [debugger._get_operand_name_and_index(d["name"])[0] for d in details]


def layer_label(tensor):
    """The Keras layer in a converted tensor's name: the innermost scope Keras suffixed with _1
    when tracing ('model_1/backbone_1/conv_pw_13_relu_1/Relu6' -> 'conv_pw_13_relu',
    'resnet20_1/stage1_conv_1/convolution' -> 'stage1_conv')."""
    parts = tensor.split(";")[0].split("/")
    scopes = [p[:-2] for p in parts[:-1] if p.endswith("_1")]
    return scopes[-1] if scopes else parts[0]


def layer_scopes(tensor):
    """Every Keras layer named in a converted (possibly fused) op's tensor name:
    'm_1/conv_pw_13_relu_1/Relu6;m_1/conv_pw_13_bn_1/batchnorm/add_1;m_1/conv_pw_13_1/convolution'
    -> {'m', 'conv_pw_13_relu', 'conv_pw_13_bn', 'conv_pw_13'}."""
    return {p[:-2] for part in tensor.split(";") for p in part.split("/")[:-1] if p.endswith("_1")}


def describe_failure(message):
    ops = sorted(set(re.findall(r"\b(tf\.[A-Za-z0-9_]+)", message)))
    if ops:
        return (f"TFLite conversion needs op(s) that are not TFLite builtins: {', '.join(ops)}. "
                "Replace the layer that produces them (a device runtime without Flex cannot run it), "
                "or pass --allow-flex if the target links the Flex delegate.")
    return f"TFLite conversion failed: {message.strip().splitlines()[-1][:300]}"
