"""Diagnosing post-training quantization with TensorFlow's quantization debugger.

`layer_errors` runs every quantized op on the calibration images and compares its output with
the float op fed the same input (so each figure is that layer's own error, not accumulated).
The ranking uses rmse/scale: the error in units of the layer's quantization step. A layer that
only rounds scores about 0.29 (1/sqrt(12)); one far above that loses information (a range
stretched by outliers, a bad zero point). `selective_model` keeps chosen layers in float.
"""
import csv
import io

import numpy as np

from kclassify.errors import ExportError


def _debugger(converter, calibration, denylist=(), ops=()):
    import tensorflow as tf

    from kclassify.export.convert import representative

    options = None
    if denylist or ops:
        options = tf.lite.experimental.QuantizationDebugOptions(
            denylisted_nodes=list(denylist) or None, denylisted_ops=list(ops) or None)
    return tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=representative(calibration), debug_options=options)


def layer_errors(converter, calibration):
    """Per quantized op: op, tensor (the converted graph's name, holding the Keras layer names),
    rmse/scale, max_abs_error, scale; worst first."""
    from kclassify.runtime import quiet_conversion

    buf = io.StringIO()
    with quiet_conversion():
        debugger = _debugger(converter, calibration)
        debugger.run()
        debugger.layer_statistics_dump(buf)
    rows = []
    for row in csv.DictReader(io.StringIO(buf.getvalue())):
        scale = float(row["scale"])
        rmse = float(np.sqrt(float(row["mean_squared_error"])))
        rows.append({"op": row["op_name"], "tensor": row["tensor_name"], "scale": scale,
                     "rmse_over_scale": rmse / scale if scale else float("inf"),
                     "max_abs_error": float(row["max_abs_error"])})
    return sorted(rows, key=lambda r: -r["rmse_over_scale"])


def layer_label(tensor):
    """The Keras layer in a fused tensor name: the innermost scope Keras suffixed with _1 when
    tracing ('model_1/backbone_1/conv_pw_13_relu_1/Relu6' -> 'conv_pw_13_relu',
    'resnet20_1/stage1_conv_1/convolution' -> 'stage1_conv')."""
    parts = tensor.split(";")[0].split("/")
    scopes = [p[:-2] for p in parts[:-1] if p.endswith("_1")]
    return scopes[-1] if scopes else parts[0]


def format_errors(rows, top=15):
    lines = [f"{'rmse/scale':>10}  {'max abs err':>11}  {'op':<16} layer (tensor)"]
    for r in rows[:top]:
        lines.append(f"{r['rmse_over_scale']:10.3f}  {r['max_abs_error']:11.4f}  {r['op']:<16} "
                     f"{layer_label(r['tensor'])}  ({r['tensor'].split(';')[0]})")
    return "\n".join(lines)


def selective_model(converter, calibration, pattern, mode):
    """The quantized model with every op whose tensor name matches `pattern` (and every op of a
    type in `mode.float_ops`) left in float (dequantize before, quantize after). Input/output
    take the mode's types where the graph's ends are quantized, else stay float32."""
    import tensorflow as tf

    from kclassify.runtime import quiet_conversion

    chosen = _matching_nodes(converter, calibration, pattern) if pattern else []
    with quiet_conversion():
        blob = _debugger(converter, calibration, chosen, mode.float_ops).get_nondebug_quantized_model()
    try:
        from tensorflow.lite.python.util import modify_model_io_type

        return bytes(modify_model_io_type(blob, getattr(tf, mode.input_type), getattr(tf, mode.output_type)))
    except Exception:  # an end of the graph left in float: the file keeps float32 there
        return bytes(blob)


def _matching_nodes(converter, calibration, pattern):
    import re

    regex = re.compile(pattern)
    names = [r["tensor"] for r in layer_errors(converter, calibration)]
    chosen = [n for n in names if regex.search(n)]
    if not chosen:
        sample = ", ".join(sorted({layer_label(n) for n in names})[:8])
        raise ExportError(f"--float-layers {pattern!r} matches no quantized layer (some layers: {sample})")
    return chosen
