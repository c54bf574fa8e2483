"""tf_keras side of the bridge: rebuild a graph.json description (see graph.py) as a tf_keras
functional model with the same weights, and check it computes what the Keras 3 model did.

Runs in the child process only: it imports numpy, tensorflow and tf_keras, never `keras` and no
kclassify module that would. Every layer keeps its Keras 3 name, so reports and tfmot's
per-layer wrappers can be matched to the original. What is rebuilt differently, and why:

- Normalization and Rescaling (fixed per-channel x * s + b, which tfmot cannot quantize) become a
  frozen DepthwiseConv2D(1) with kernel s and bias b: one per-channel-quantized op whose 1x1
  weights are exact under int8. On a tensor that is not rank 4 (ResNet-9 rescales its logits)
  they become ChannelAffine below: a MUL (and ADD) by constants, output quantized.
- BatchNormalization stays a BatchNormalization when it directly follows a Conv2D/DepthwiseConv2D
  or Dense that feeds nothing else (tfmot's conv+BN patterns fold it as TFLite does); anywhere else (pre-activation units: after an
  Add or a Concatenate) tfmot has no quantized BN, so it becomes the same affine DepthwiseConv2D(1)
  with the inference-mode scale gamma/sqrt(var+eps) and bias beta - mean*scale (trainable; on a
  tensor that is not rank 4, a frozen ChannelAffine).
- Activation relu6 becomes a ReLU(max_value=6) layer (tfmot fuses conv+BN+ReLU); hard_silu /
  hard_swish and hard_sigmoid become the small layers below, computing exactly Keras 3's
  x*relu6(x+3)/6 and relu6(x+3)/6 (tf_keras' own hard_sigmoid is 0.2x+0.5), which the TFLite
  converter maps to HARD_SWISH and ADD(+RELU6)+MUL builtins.
- kclassify's PadShortcut becomes a frozen Conv2D 1x1 (stride s, no bias) with the same 0/1
  kernel: the same single CONV_2D as the Keras 3 export.
- An activation inside a Conv2D / DepthwiseConv2D / Dense other than table.FUSED becomes its own
  activation layer "<layer>_act" after the linear layer (tfmot's wrapper takes no relu6 or
  hard-swish inside a conv; TFLite fuses only ReLU-like ones anyway).
- Resizing (an in-graph upscale in front of a backbone) stays a Resizing, its output quantized.

Which layer types exist, their fields and their activations: table.py, shared with graph.py.
A layer the description marks "trainable": false (frozen in the fine-tuning's last phase) is
built frozen.
"""
import numpy as np
import tensorflow as tf
import tf_keras as K

from kclassify.qat.table import ACTIVATIONS, LAYERS, kept_fused

ROLE_LAYER = "layer"      # an ordinary trainable layer
ROLE_FIXED = "fixed"      # a frozen replacement (normalization, rescaling, option-A shortcut)
ROLE_AFFINE = "affine"    # a standalone BatchNorm as a trainable per-channel affine
ROLE_OUTPUT = "output"    # quantize the output only (custom activations, Multiply)


class HardSwish(K.layers.Layer):
    """Keras 3's hard_silu / hard_swish: x * relu6(x + 3) / 6 (TFLite HARD_SWISH)."""

    def call(self, x):
        return x * tf.nn.relu6(x + 3.0) * (1.0 / 6.0)


class HardSigmoid(K.layers.Layer):
    """Keras 3's hard_sigmoid: relu6(x + 3) / 6 (not tf_keras' 0.2x + 0.5)."""

    def call(self, x):
        return tf.nn.relu6(x + 3.0) * (1.0 / 6.0)


class ChannelAffine(K.layers.Layer):
    """x * scale + offset with fixed per-channel (or scalar) constants, for tensors that are not
    rank 4 (a Rescaling of logits): TFLite MUL/ADD by a constant, as the Keras 3 export has."""

    def __init__(self, scale, offset, **kwargs):
        super().__init__(**kwargs)
        self.scale, self.offset = [float(v) for v in scale], [float(v) for v in offset]

    def call(self, x):
        constant = lambda v: tf.constant(v[0] if len(set(v)) == 1 else v, x.dtype)
        if any(v != 1.0 for v in self.scale):
            x = x * constant(self.scale)
        if any(v != 0.0 for v in self.offset):
            x = x + constant(self.offset)
        return x

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "offset": self.offset}


CUSTOM_OBJECTS = {"HardSwish": HardSwish, "HardSigmoid": HardSigmoid, "ChannelAffine": ChannelAffine}


class TranslationError(Exception):
    """The description cannot be rebuilt, or the rebuilt model does not match."""


class Builder:
    """Builds the tf_keras graph layer by layer; remembers the weights to copy and each layer's role."""

    def __init__(self, graph, weights):
        self.graph, self.weights = graph, weights
        self.tensors, self.roles, self.assign = {}, {}, []  # assign: (layer, [arrays]) after build
        self.consumers = {}
        for spec in graph["layers"]:
            for src in spec["inbound"]:
                self.consumers.setdefault(src, []).append(spec["name"])
        self.classes = {spec["name"]: spec["class_name"] for spec in graph["layers"]}

    def w(self, spec, name):
        key = spec["weights"].get(name)
        if key is None:
            raise TranslationError(f"layer {spec['name']!r} ({spec['class_name']}) has no weight {name!r}")
        return np.asarray(self.weights[key], np.float32)

    def add(self, spec, layer, x, arrays=None, role=ROLE_LAYER):
        y = layer(x)
        if arrays is not None:
            self.assign.append((layer, arrays))
        self.roles[layer.name] = role
        return y

    def affine(self, name, x, scale, offset, trainable, role):
        """x * scale + offset per channel as a DepthwiseConv2D(1) (rank 4) or, for a rank-2 tensor,
        the same between two Reshapes."""
        channels = int(x.shape[-1])
        scale = np.broadcast_to(np.asarray(scale, np.float32), (channels,))
        offset = np.broadcast_to(np.asarray(offset, np.float32), (channels,))
        if len(x.shape) == 4:
            layer = K.layers.DepthwiseConv2D(1, use_bias=True, trainable=trainable, name=name)
            return self.add(None, layer, x, [scale.reshape(1, 1, channels, 1).copy(), offset.copy()], role)
        # Other ranks (logits): fixed constants, output quantized (a DepthwiseConv2D between two
        # Reshapes would leave SHAPE/STRIDED_SLICE/PACK ops for the dynamic batch in the .tflite).
        return self.add(None, ChannelAffine(scale.tolist(), offset.tolist(), name=name), x, role=ROLE_OUTPUT)

    def bn_follows_conv(self, spec):  # (or Dense)
        (src,) = spec["inbound"]
        if self.classes.get(src) not in ("Conv2D", "DepthwiseConv2D", "Dense"):
            return False
        conv = next(s for s in self.graph["layers"] if s["name"] == src)
        return conv["config"]["activation"] == "linear" and self.consumers.get(src) == [spec["name"]]

    def layer(self, spec):
        name, cls, cfg = spec["name"], spec["class_name"], spec["config"]
        if cls not in LAYERS or LAYERS[cls].dropped:
            raise TranslationError(f"layer {name!r}: type {cls} has no tf_keras translation")
        ins = [self.tensors[n] for n in spec["inbound"]]
        x = ins[0] if len(ins) == 1 else ins
        build = getattr(self, f"build_{cls}", None)
        if build is not None:
            return build(spec, name, cfg, x)
        role = ROLE_OUTPUT if LAYERS[cls].output_only else ROLE_LAYER
        return self.add(spec, SIMPLE[cls](name, cfg), x, role=role)

    # ---- the layers that need more than their fields (table.py lists them all)

    def build_Normalization(self, spec, name, cfg, x):
        std = np.maximum(np.sqrt(np.asarray(cfg["variance"], np.float64)), cfg["epsilon"])
        scale = (1.0 / std).astype(np.float32)
        return self.affine(name, x, scale, (-np.asarray(cfg["mean"], np.float64) / std).astype(np.float32),
                           False, ROLE_FIXED)

    def build_Rescaling(self, spec, name, cfg, x):
        return self.affine(name, x, cfg["scale"], cfg["offset"], False, ROLE_FIXED)

    def build_Conv2D(self, spec, name, cfg, x):
        layer = K.layers.Conv2D(cfg["filters"], cfg["kernel_size"], strides=cfg["strides"], padding=cfg["padding"],
                                dilation_rate=cfg["dilation_rate"], groups=cfg["groups"], use_bias=cfg["use_bias"],
                                activation=self.fused(cfg), trainable=spec.get("trainable", True), name=name)
        return self.linear(spec, layer, x)

    def build_DepthwiseConv2D(self, spec, name, cfg, x):
        layer = K.layers.DepthwiseConv2D(cfg["kernel_size"], strides=cfg["strides"], padding=cfg["padding"],
                                         depth_multiplier=cfg["depth_multiplier"], dilation_rate=cfg["dilation_rate"],
                                         use_bias=cfg["use_bias"], activation=self.fused(cfg),
                                         trainable=spec.get("trainable", True), name=name)
        return self.linear(spec, layer, x)

    def build_Dense(self, spec, name, cfg, x):
        layer = K.layers.Dense(cfg["units"], use_bias=cfg["use_bias"], activation=self.fused(cfg),
                               trainable=spec.get("trainable", True), name=name)
        return self.linear(spec, layer, x)

    def build_BatchNormalization(self, spec, name, cfg, x):
        channels = int(x.shape[-1])
        gamma = self.w(spec, "gamma") if cfg["scale"] else np.ones(channels, np.float32)
        beta = self.w(spec, "beta") if cfg["center"] else np.zeros(channels, np.float32)
        mean, var = self.w(spec, "moving_mean"), self.w(spec, "moving_variance")
        trainable = spec.get("trainable", True)
        if self.bn_follows_conv(spec):
            # fused=False: tf.nn.batch_normalization, the very arithmetic of Keras 3's BN (the
            # fused kernel rounds differently: 1e-5 apart after GoogLeNet's 57 BNs).
            layer = K.layers.BatchNormalization(axis=-1, fused=False, momentum=cfg["momentum"], epsilon=cfg["epsilon"],
                                                center=cfg["center"], scale=cfg["scale"], trainable=trainable,
                                                name=name)
            arrays = ([gamma] if cfg["scale"] else []) + ([beta] if cfg["center"] else []) + [mean, var]
            return self.add(spec, layer, x, arrays)
        inv = (gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + cfg["epsilon"]))
        return self.affine(name, x, inv.astype(np.float32), (beta - mean * inv).astype(np.float32), trainable,
                           ROLE_AFFINE)

    def build_Activation(self, spec, name, cfg, x):
        return self.activation(name, cfg["activation"], x)

    def build_PadShortcut(self, spec, name, cfg, x):
        layer = K.layers.Conv2D(cfg["filters"], 1, strides=cfg["stride"], padding="valid", use_bias=False,
                                trainable=False, name=name)
        return self.add(spec, layer, x, [self.w(spec, "kernel")], ROLE_FIXED)

    # ---- shared pieces

    @staticmethod
    def fused(cfg):
        act = cfg["activation"]
        return act if kept_fused(act) else "linear"

    def linear(self, spec, layer, x):
        """A Conv2D / DepthwiseConv2D / Dense with its weights; an activation it cannot keep inside
        follows as its own layer."""
        cfg = spec["config"]
        arrays = [self.w(spec, "kernel")] + ([self.w(spec, "bias")] if cfg["use_bias"] else [])
        y = self.add(spec, layer, x, arrays)
        if kept_fused(cfg["activation"]):
            return y
        name = f"{spec['name']}_act"
        if name in self.classes:
            raise TranslationError(f"layer {spec['name']!r}: its activation would be named {name!r}, which is taken")
        return self.activation(name, cfg["activation"], y)

    def activation(self, name, act, x):
        """One Keras 3 activation as a tf_keras layer (table.ACTIVATIONS)."""
        if act not in ACTIVATIONS:
            raise TranslationError(f"layer {name!r}: activation {act!r} is not translated")
        target = ACTIVATIONS[act]
        if target == "relu6":
            return self.add(None, K.layers.ReLU(max_value=6.0, name=name), x)
        if target == "hard_swish":
            return self.add(None, HardSwish(name=name), x, role=ROLE_OUTPUT)
        if target == "hard_sigmoid":
            return self.add(None, HardSigmoid(name=name), x, role=ROLE_OUTPUT)
        return self.add(None, K.layers.Activation(target, name=name), x)

    def build(self):
        inputs = []
        for spec in self.graph["layers"]:
            if spec["class_name"] == "InputLayer":
                tensor = K.Input(shape=tuple(spec["config"]["shape"]), name=spec["name"], dtype="float32")
                inputs.append(tensor)
                self.tensors[spec["name"]] = tensor
                continue
            self.tensors[spec["name"]] = self.layer(spec)
        by_name = {t.name.split(":")[0]: t for t in inputs}
        model_inputs = [self.tensors[n] if n in self.tensors else by_name[n] for n in self.graph["inputs"]]
        outputs = [self.tensors[n] for n in self.graph["outputs"]]
        model = K.Model(model_inputs[0] if len(model_inputs) == 1 else model_inputs,
                        outputs[0] if len(outputs) == 1 else outputs, name=self.graph.get("name", "model"))
        for layer, arrays in self.assign:
            expected = [tuple(v.shape) for v in layer.weights]
            got = [tuple(a.shape) for a in arrays]
            if expected != got:
                raise TranslationError(f"layer {layer.name!r}: weight shapes {got} do not fit the tf_keras layer {expected}")
            layer.set_weights(arrays)
        return model


# The table's layers that are only their fields (role: see table.Kind.output_only).
SIMPLE = {
    "ReLU": lambda n, c: K.layers.ReLU(max_value=c["max_value"], negative_slope=c["negative_slope"],
                                       threshold=c["threshold"], name=n),
    "Softmax": lambda n, c: K.layers.Softmax(axis=c["axis"], name=n),
    "Add": lambda n, c: K.layers.Add(name=n),
    "Multiply": lambda n, c: K.layers.Multiply(name=n),
    "Concatenate": lambda n, c: K.layers.Concatenate(axis=c["axis"], name=n),
    "GlobalAveragePooling2D": lambda n, c: K.layers.GlobalAveragePooling2D(keepdims=c["keepdims"], name=n),
    "GlobalMaxPooling2D": lambda n, c: K.layers.GlobalMaxPooling2D(keepdims=c["keepdims"], name=n),
    "AveragePooling2D": lambda n, c: K.layers.AveragePooling2D(c["pool_size"], strides=c["strides"],
                                                               padding=c["padding"], name=n),
    "MaxPooling2D": lambda n, c: K.layers.MaxPooling2D(c["pool_size"], strides=c["strides"], padding=c["padding"],
                                                       name=n),
    "ZeroPadding2D": lambda n, c: K.layers.ZeroPadding2D(_padding(c["padding"]), name=n),
    "Flatten": lambda n, c: K.layers.Flatten(name=n),
    "Reshape": lambda n, c: K.layers.Reshape(tuple(c["target_shape"]), name=n),
    "Dropout": lambda n, c: K.layers.Dropout(c["rate"], name=n),
    "Resizing": lambda n, c: K.layers.Resizing(c["height"], c["width"], interpolation="bilinear", name=n),
}


def builders():
    """{class name: how the child builds it} for every layer type it takes (a test holds this
    equal to table.LAYERS less the dropped ones)."""
    made = {"InputLayer": "input", **{cls: "fields" for cls in SIMPLE}}
    made.update({name[len("build_"):]: "method" for name in dir(Builder) if name.startswith("build_")})
    return made


def _padding(value):
    if isinstance(value, (list, tuple)):
        return tuple(tuple(v) if isinstance(v, (list, tuple)) else v for v in value)
    return value


def build(graph, weights):
    """(tf_keras model, {layer name: role}) from a description and its weights (dict-like of arrays)."""
    builder = Builder(graph, weights)
    model = builder.build()
    return model, builder.roles


def max_difference(model, images, reference, batch_size=64):
    """max |tf_keras output - Keras 3 output| over the sample images."""
    out = model.predict(np.asarray(images, np.float32), batch_size=batch_size, verbose=0)
    return float(np.abs(np.asarray(out, np.float32) - np.asarray(reference, np.float32)).max())


def check(model, samples, tolerance):
    """Raise TranslationError when the rebuilt model differs from the Keras 3 outputs."""
    diff = max_difference(model, samples["images"], samples["outputs"])
    if not diff < tolerance:
        raise TranslationError(f"the tf_keras translation of {model.name!r} differs from the Keras 3 model: "
                               f"max |difference| {diff:.3g} on {len(samples['images'])} images "
                               f"(tolerance {tolerance:g})")
    return diff
