"""The one table of layers the QAT bridge takes. graph.py (Keras 3, the parent) describes exactly
these layer types and refuses any other before a child process starts; translate.py (tf_keras,
the child) rebuilds exactly these. Pure data, standard library only: both sides import it.
"""
from dataclasses import dataclass

# Keras 3 activation name -> what the child builds: a tf_keras activation name, or one of the
# custom layers of translate.py (relu6, hard_swish, hard_sigmoid).
ACTIVATIONS = {"linear": "linear", "relu": "relu", "relu6": "relu6", "softmax": "softmax", "sigmoid": "sigmoid",
               "tanh": "tanh", "silu": "swish", "swish": "swish", "hard_silu": "hard_swish",
               "hard_swish": "hard_swish", "hard_sigmoid": "hard_sigmoid"}
# Activations that stay inside a Conv2D / DepthwiseConv2D / Dense (tfmot's fake-quant wrapper and
# TFLite's fused kernels both take them); any other activation of those layers becomes its own
# activation layer, named <layer>_act, right after the linear layer: the same arithmetic.
FUSED = ("linear", "relu")


@dataclass(frozen=True)
class Kind:
    fields: tuple = ()        # structural config fields copied as they are into graph.json
    activation: bool = False  # has an `activation` field, one of ACTIVATIONS
    computed: bool = False    # graph.py computes its fields (constants folded from its weights or config)
    origin: str = "keras"     # the package its class must come from: "keras" or "kclassify"
    dropped: bool = False     # the identity at inference (training-only): left out, consumers rewired
    output_only: bool = False  # tfmot has no quantized version: the child quantizes its output only


CONV = ("kernel_size", "strides", "padding", "dilation_rate", "use_bias")
POOL = ("pool_size", "strides", "padding")

LAYERS = {
    "InputLayer": Kind(computed=True),
    "Normalization": Kind(computed=True),
    "Rescaling": Kind(computed=True),
    "Resizing": Kind(("height", "width", "interpolation"), computed=True, output_only=True),
    "Conv2D": Kind(("filters", "groups") + CONV, activation=True),
    "DepthwiseConv2D": Kind(("depth_multiplier",) + CONV, activation=True),
    "Dense": Kind(("units", "use_bias"), activation=True),
    "BatchNormalization": Kind(("epsilon", "momentum", "center", "scale"), computed=True),
    "Activation": Kind(activation=True),
    "ReLU": Kind(("max_value", "negative_slope", "threshold")),
    "Softmax": Kind(("axis",)),
    "Add": Kind(),
    "Multiply": Kind(output_only=True),
    "Concatenate": Kind(("axis",)),
    "GlobalAveragePooling2D": Kind(("keepdims",)),
    "GlobalMaxPooling2D": Kind(("keepdims",)),
    "AveragePooling2D": Kind(POOL),
    "MaxPooling2D": Kind(POOL),
    "ZeroPadding2D": Kind(("padding",)),
    "Flatten": Kind(),
    "Reshape": Kind(("target_shape",)),
    "Dropout": Kind(("rate",)),
    "PadShortcut": Kind(computed=True, origin="kclassify"),
    "DropBlock2D": Kind(origin="kclassify", dropped=True),
    "StochasticDepth": Kind(origin="kclassify", dropped=True),
}
# A nested functional model (a Keras Applications backbone, a kclassify .keras backbone) is no
# entry here: graph.py flattens its layers into the one graph.
NESTED = ("Functional",)


def kept_fused(activation):
    """Whether a Conv2D / DepthwiseConv2D / Dense keeps `activation` inside (else: its own layer)."""
    return activation in FUSED
