"""The one table of TFLite export modes: what each converts to and what its file takes and gives."""
from dataclasses import dataclass

from kclassify.errors import ExportError


@dataclass(frozen=True)
class Mode:
    name: str
    summary: str
    optimize: bool = False      # converter.optimizations = [DEFAULT]
    float16: bool = False       # float16 weights
    calibrate: bool = False     # needs calibration images (activations quantized)
    ops: str = "builtins"       # builtins | int8 | 16x8: the op set the converter may use
    input_type: str = "float32"
    output_type: str = "float32"
    float_ops: tuple = ()       # TFLite op types left in float (dequantize before, quantize after)
    per_channel: bool = True    # one weight scale per output channel (else one per tensor)


MODES = {m.name: m for m in (
    Mode("float32", "no quantization"),
    Mode("float16", "float16 weights (half the size), float32 compute on CPU", optimize=True, float16=True),
    Mode("dynamic", "int8 weights, activations quantized on the fly", optimize=True),
    Mode("int8", "full integer; uint8 raw-pixel input (scale 1, zero point 0), float32 probabilities",
         optimize=True, calibrate=True, ops="int8", input_type="uint8"),
    Mode("int8-uint8io", "full integer with uint8 input and uint8 output (integer-only accelerators)",
         optimize=True, calibrate=True, ops="int8", input_type="uint8", output_type="uint8"),
    Mode("int8-int8io", "full integer with int8 input and int8 output",
         optimize=True, calibrate=True, ops="int8", input_type="int8", output_type="int8"),
    Mode("int8-xnnpack", "int8 except the ops XNNPACK runs only in float (HARD_SWISH), which stay float "
         "so the whole graph runs in the delegate: the fast choice for CPUs; same as int8 without them",
         optimize=True, calibrate=True, ops="int8", input_type="uint8", float_ops=("HARD_SWISH",)),
    Mode("int8-pertensor", "int8 with one weight scale per tensor: a smaller file (per-channel scales and "
         "zero points are 6-13% of a small int8 net); check its accuracy, depthwise nets can lose more",
         optimize=True, calibrate=True, ops="int8", input_type="uint8", per_channel=False),
    Mode("16x8", "int16 activations, int8 weights (ops without a 16x8 kernel stay float); float32 in and out",
         optimize=True, calibrate=True, ops="16x8"),
)}


def get_mode(name):
    if name not in MODES:
        raise ExportError(f"unknown quantization mode {name!r}; choose from {', '.join(MODES)}")
    return MODES[name]
