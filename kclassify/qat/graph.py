"""Keras 3 side of the bridge: a functional model as plain JSON + an .npz of weights.

    {"name": ..., "inputs": [layer names], "outputs": [layer names],
     "layers": [{"name", "class_name", "config": {structural fields only},
                 "inbound": [names of the layers feeding it, in call order],
                 "weights": {"kernel": "<npz key>", ...}}, ...]}

Layers come in topological order. Only the fields that change the computation are kept
(no initializers, regularizers or dtype policies); every weight is stored under
"<layer>::<variable>" (BatchNorm moving statistics included). The training-only layers
kclassify inserts (DropBlock2D, StochasticDepth: the identity at inference) are left out and
their consumers wired to their input. Anything outside SUPPORTED raises QATError naming the
layer and its type, before a child process is started.
"""
import json
from pathlib import Path

import numpy as np

from kclassify.qat import QATError

# Activation names (Keras 3 serialization) the child can rebuild exactly.
ACTIVATIONS = ("linear", "relu", "relu6", "softmax", "sigmoid", "tanh", "silu", "swish", "hard_silu",
               "hard_swish", "hard_sigmoid")
DROPPED = ("DropBlock2D", "StochasticDepth")  # kclassify layers that are the identity at inference


def _fields(*names):
    return lambda layer, cfg: {k: cfg[k] for k in names}


def _activation(layer, cfg):
    act = cfg["activation"]
    if act not in ACTIVATIONS:
        raise QATError(f"layer {layer.name!r} ({type(layer).__name__}) uses activation {act!r}, which the "
                       f"QAT bridge does not translate; supported: {', '.join(ACTIVATIONS)}")
    return {"activation": act}


def _with_activation(*names):
    def extract(layer, cfg):
        out = {k: cfg[k] for k in names}
        out.update(_activation(layer, cfg))
        return out
    return extract


def _normalization(layer, cfg):
    if cfg.get("invert"):
        raise QATError(f"layer {layer.name!r} (Normalization) has invert=True, which the QAT bridge does not translate")
    from keras import backend, ops

    channels = int(layer.input.shape[-1])
    axis = cfg["axis"]
    if list(axis if isinstance(axis, (list, tuple)) else [axis]) not in ([-1], [len(layer.input.shape) - 1]):
        raise QATError(f"layer {layer.name!r} (Normalization) normalizes axis {axis}; only the channel axis is supported")
    as_channels = lambda v: np.broadcast_to(np.asarray(ops.convert_to_numpy(v), np.float32).reshape(-1), (channels,))
    return {"mean": as_channels(layer.mean).tolist(), "variance": as_channels(layer.variance).tolist(),
            "epsilon": float(backend.epsilon())}


def _rescaling(layer, cfg):
    channels = int(layer.input.shape[-1])
    as_channels = lambda v: np.broadcast_to(np.asarray(v, np.float32).reshape(-1), (channels,)).tolist()
    return {"scale": as_channels(cfg["scale"]), "offset": as_channels(cfg["offset"])}


def _batch_norm(layer, cfg):
    axis = cfg["axis"]
    if axis not in (-1, len(layer.input.shape) - 1):
        raise QATError(f"layer {layer.name!r} (BatchNormalization) normalizes axis {axis}; only the channel axis is supported")
    return {k: cfg[k] for k in ("epsilon", "momentum", "center", "scale")}


def _pad_shortcut(layer, cfg):
    return {"filters": int(layer.filters), "stride": int(layer.stride)}


# class name -> structural config extractor. Keras layers must come from keras itself (a subclass
# of Conv2D with its own call() is not a Conv2D); kclassify layers from kclassify.layers.
SUPPORTED = {
    "InputLayer": lambda layer, cfg: {"shape": list(cfg["batch_shape"][1:])},
    "Normalization": _normalization,
    "Rescaling": _rescaling,
    "Conv2D": _with_activation("filters", "kernel_size", "strides", "padding", "dilation_rate", "groups", "use_bias"),
    "DepthwiseConv2D": _with_activation("kernel_size", "strides", "padding", "depth_multiplier", "dilation_rate",
                                        "use_bias"),
    "Dense": _with_activation("units", "use_bias"),
    "BatchNormalization": _batch_norm,
    "Activation": _activation,
    "ReLU": _fields("max_value", "negative_slope", "threshold"),
    "Softmax": _fields("axis"),
    "Add": _fields(),
    "Multiply": _fields(),
    "Concatenate": _fields("axis"),
    "GlobalAveragePooling2D": _fields("keepdims"),
    "GlobalMaxPooling2D": _fields("keepdims"),
    "AveragePooling2D": _fields("pool_size", "strides", "padding"),
    "MaxPooling2D": _fields("pool_size", "strides", "padding"),
    "ZeroPadding2D": _fields("padding"),
    "Flatten": _fields(),
    "Reshape": _fields("target_shape"),
    "Dropout": _fields("rate"),
    "PadShortcut": _pad_shortcut,
}
KCLASSIFY_LAYERS = ("PadShortcut",) + DROPPED


def _kind(layer):
    """The table key of a live layer, or None when it is not one the bridge knows."""
    cls = type(layer)
    name, module = cls.__name__, cls.__module__
    if name in KCLASSIFY_LAYERS:
        return name if module.startswith("kclassify.") else None
    if name in SUPPORTED and module.startswith("keras."):
        return name
    return None


def unsupported(layer, why=None):
    cls = type(layer).__name__
    if why is None and cls in ("Functional", "Sequential", "Model"):
        why = "a nested model (e.g. a Keras Applications backbone); only flat kclassify architectures are supported"
    if why is None:
        why = "no tf_keras translation for this layer type"
    known = ", ".join(sorted(set(SUPPORTED) | set(DROPPED)))
    return QATError(f"layer {layer.name!r} of type {cls} is not supported by the QAT bridge: {why}. "
                    f"Supported types: {known}")


def _inbound(node):
    """Layer names of the keras tensors in one serialized inbound node, in call order."""
    found = []

    def walk(obj):
        if isinstance(obj, dict):
            if obj.get("class_name") == "__keras_tensor__":
                found.append(obj["config"]["keras_history"][0])
                return
            for value in obj.values():
                walk(value)
        elif isinstance(obj, (list, tuple)):
            for value in obj:
                walk(value)

    walk(node.get("args", []))
    walk(node.get("kwargs", {}))
    return found


def describe(model):
    """(graph dict, {npz key: array}) for a Keras 3 functional model."""
    import keras

    try:
        cfg = model.get_config() if isinstance(model, keras.Model) else None
    except NotImplementedError:
        cfg = None
    if not cfg or "layers" not in cfg or "input_layers" not in cfg:  # subclassed or Sequential
        raise QATError(f"the QAT bridge needs a functional Keras model, got {type(model).__name__}")
    alias = {}  # dropped layer -> the layer its output really is
    layers, weights = [], {}
    for entry in cfg["layers"]:
        layer = model.get_layer(entry["name"])
        kind = _kind(layer)
        if kind is None:
            raise unsupported(layer)
        nodes = entry.get("inbound_nodes", [])
        if len(nodes) > 1:
            raise unsupported(layer, "it is called more than once (a shared layer)")
        data_format = entry["config"].get("data_format")
        if data_format not in (None, "channels_last"):
            raise unsupported(layer, f"data_format={data_format!r}; only channels_last is supported")
        inbound = [alias.get(n, n) for n in (_inbound(nodes[0]) if nodes else [])]
        if kind in DROPPED:
            if len(inbound) != 1:
                raise unsupported(layer, "a training-only layer with more than one input")
            alias[layer.name] = inbound[0]
            continue
        record = {"name": layer.name, "class_name": kind, "config": SUPPORTED[kind](layer, entry["config"]),
                  "inbound": inbound, "weights": {}}
        if kind == "PadShortcut":  # its fixed 0/1 kernel is an attribute, not a variable
            key = f"{layer.name}::kernel"
            weights[key] = np.asarray(layer.kernel, np.float32)
            record["weights"]["kernel"] = key
        for var in layer.weights:
            key = f"{layer.name}::{var.name}"
            weights[key] = np.asarray(keras.ops.convert_to_numpy(var), np.float32)
            record["weights"][var.name] = key
        layers.append(record)
    io_name = lambda t: alias.get(t._keras_history.operation.name, t._keras_history.operation.name)
    graph = {"name": model.name, "inputs": [io_name(t) for t in model.inputs],
             "outputs": [io_name(t) for t in model.outputs], "layers": layers}
    return graph, weights


def float32_model(model):
    """`model` itself when it computes in float32, else a float32 copy with the same weights (a
    mixed-precision run is compared and translated in float32: the tf_keras side is float32)."""
    import keras

    if all(getattr(layer.dtype_policy, "compute_dtype", "float32") == "float32" for layer in model.layers):
        return model
    cfg = model.get_config()
    for entry in cfg["layers"]:
        if "dtype" in entry["config"]:
            entry["config"]["dtype"] = "float32"
    copy = keras.Model.from_config(cfg)
    copy.set_weights(model.get_weights())
    return copy


def write_model(model, folder, sample_images):
    """Write graph.json, weights.npz and samples.npz (float32 images and the Keras 3 outputs on
    them) into `folder`; returns the paths as a dict for the job file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = float32_model(model)
    graph, weights = describe(model)
    images = np.asarray(sample_images, np.float32)
    outputs = np.asarray(model.predict(images, verbose=0, batch_size=64), np.float32)
    (folder / "graph.json").write_text(json.dumps(graph, indent=1))
    np.savez(folder / "weights.npz", **weights)
    np.savez(folder / "samples.npz", images=images, outputs=outputs)
    return {"graph": str(folder / "graph.json"), "weights": str(folder / "weights.npz"),
            "samples": str(folder / "samples.npz")}
