"""Diagnosing post-training quantization with TensorFlow's quantization debugger (read-only:
what to keep in float is decided by budget.py or the user, and done by convert.Quantizer).

`layer_errors` runs every quantized op on the calibration images and compares its output with
the float op fed the same input (so each figure is that layer's own error, not accumulated).
The ranking uses rmse/scale: the error in units of the layer's quantization step. A layer that
only rounds scores about 0.29 (1/sqrt(12)); one far above that loses information (a range
stretched by outliers, a bad zero point).
"""
import csv
import io

import numpy as np

from kclassify.runtime import quiet_conversion
from kclassify.tflite.convert import layer_label


def layer_errors(quantizer):
    """Per quantized op of a convert.Quantizer: op, tensor (the converted graph's name, holding
    the Keras layer names), rmse/scale, max_abs_error, scale; worst first."""
    buf = io.StringIO()
    with quiet_conversion():
        quantizer.debugger.run()
        quantizer.debugger.layer_statistics_dump(buf)
    rows = []
    for row in csv.DictReader(io.StringIO(buf.getvalue())):
        scale = float(row["scale"])
        rmse = float(np.sqrt(float(row["mean_squared_error"])))
        rows.append({"op": row["op_name"], "tensor": row["tensor_name"], "layer": layer_label(row["tensor_name"]),
                     "scale": scale, "rmse_over_scale": rmse / scale if scale else float("inf"),
                     "max_abs_error": float(row["max_abs_error"])})
    return sorted(rows, key=lambda r: -r["rmse_over_scale"])


def layer_groups(rows):
    """[(Keras layer, [tensor names])] worst first: the ops of one Keras layer go to float together."""
    groups = {}
    for r in rows:
        groups.setdefault(r["layer"], []).append(r["tensor"])
    return list(groups.items())


def format_errors(rows, top=15):
    lines = [f"{'rmse/scale':>10}  {'max abs err':>11}  {'op':<16} layer (tensor)"]
    for r in rows[:top]:
        lines.append(f"{r['rmse_over_scale']:10.3f}  {r['max_abs_error']:11.4f}  {r['op']:<16} "
                     f"{r['layer']}  ({r['tensor'].split(';')[0]})")
    return "\n".join(lines)
