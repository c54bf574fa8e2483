"""Keras 3 side of the bridge: a functional model as plain JSON + an .npz of weights.

    {"name": ..., "inputs": [layer names], "outputs": [layer names],
     "layers": [{"name", "class_name", "config": {structural fields only},
                 "inbound": [names of the layers feeding it, in call order],
                 "weights": {"kernel": "<npz key>", ...}, "trainable": bool,
                 "path": "backbone/conv1" (where it sits in the Keras model)}, ...]}

Layers come in topological order. Only the fields that change the computation are kept
(no initializers, regularizers or dtype policies); every weight is stored under
"<layer>::<variable>" (BatchNorm moving statistics included). Nested functional models (a Keras
Applications backbone, a kclassify .keras backbone) are flattened: their layers join the one
graph, their input layers are wired to what feeds the nested model, and whatever consumed the
nested model reads its output layer; a layer keeps its own name unless an outer one took it
(then "<model>_<name>"). The training-only layers kclassify inserts (DropBlock2D,
StochasticDepth: the identity at inference) are left out and their consumers wired to their
input. The layer types, their fields and their activations come from table.py, which the child
also reads; anything outside it raises QATError naming the layer and its type, before a child
process is started. "trainable" is the layer's own flag and every enclosing model's.
"""
import json
from pathlib import Path

import keras
import numpy as np
from keras import backend, ops

from kclassify.qat import QATError
from kclassify.qat.table import ACTIVATIONS, LAYERS, NESTED


def _activation(layer, cfg):
    act = cfg["activation"]
    if act not in ACTIVATIONS:
        raise QATError(f"layer {layer.name!r} ({type(layer).__name__}) uses activation {act!r}, which the "
                       f"QAT bridge does not translate; supported: {', '.join(ACTIVATIONS)}")
    return {"activation": act}


def _input(layer, cfg):
    return {"shape": list(cfg["batch_shape"][1:])}


def _normalization(layer, cfg):
    if cfg.get("invert"):
        raise QATError(f"layer {layer.name!r} (Normalization) has invert=True, which the QAT bridge does not translate")

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


def _resizing(layer, cfg):
    if cfg.get("crop_to_aspect_ratio") or cfg.get("pad_to_aspect_ratio") or cfg["interpolation"] != "bilinear":
        raise QATError(f"layer {layer.name!r} (Resizing): only a plain bilinear resize is translated")
    return {}


def _batch_norm(layer, cfg):
    axis = cfg["axis"]
    if axis not in (-1, len(layer.input.shape) - 1):
        raise QATError(f"layer {layer.name!r} (BatchNormalization) normalizes axis {axis}; only the channel axis is supported")
    return {}


def _pad_shortcut(layer, cfg):
    return {"filters": int(layer.filters), "stride": int(layer.stride)}


# The table's computed fields, by class name (table.LAYERS says which classes have them).
COMPUTED = {"InputLayer": _input, "Normalization": _normalization, "Rescaling": _rescaling, "Resizing": _resizing,
            "BatchNormalization": _batch_norm, "PadShortcut": _pad_shortcut}


def structural_config(layer, kind_name, cfg):
    """The fields of one layer that graph.json carries (table.py: which ones)."""
    kind = LAYERS[kind_name]
    out = {k: cfg[k] for k in kind.fields}
    if kind.activation:
        out.update(_activation(layer, cfg))
    if kind.computed:
        out.update(COMPUTED[kind_name](layer, cfg))
    return out


def _kind(layer):
    """The table key of a live layer, or None when it is not one the bridge knows. Keras layers
    must come from keras itself (a subclass of Conv2D with its own call() is not a Conv2D)."""
    cls = type(layer)
    kind = LAYERS.get(cls.__name__)
    if kind is None:
        return None
    return cls.__name__ if cls.__module__.startswith(f"{kind.origin}.") else None


def _is_nested(layer):
    return type(layer).__name__ in NESTED and isinstance(layer, keras.Model)


def unsupported(layer, why=None, where=None):
    """The one-line refusal: the layer (its path inside nested models), its class and the package
    that class comes from (a KerasHub or custom layer is named as such), and why."""
    cls = type(layer)
    package = cls.__module__.split(".")[0]
    if why is None and cls.__name__ in ("Sequential", "Model"):
        why = "a nested Sequential or subclassed model; only nested functional models are flattened"
    if why is None:
        why = f"no tf_keras translation for {package}'s {cls.__name__}"
    return QATError(f"layer {where or layer.name!r} of type {cls.__name__} is not supported by the QAT bridge: "
                    f"{why} (the types it takes are listed in kclassify/qat/table.py)")


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


def _io_names(entries):
    """Layer names of a config's input_layers/output_layers ([name, node, index] or a list of them)."""
    if entries and isinstance(entries[0], str):
        entries = [entries]
    return [e[0] for e in entries]


def _functional_config(model):
    try:
        cfg = model.get_config() if isinstance(model, keras.Model) else None
    except NotImplementedError:
        cfg = None
    if not cfg or "layers" not in cfg or "input_layers" not in cfg:  # subclassed or Sequential
        raise QATError(f"the QAT bridge needs a functional Keras model, got {type(model).__name__}")
    return cfg


class Flattener:
    """Walks a functional model and the functional models nested in it into one layer list."""

    def __init__(self):
        self.layers, self.weights = [], {}
        self.alias = {}  # scoped key ("backbone/conv1") -> the emitted layer name it stands for
        self.taken, self.reserved = set(), set()

    def walk(self, model, scope="", feeds=None, trainable=True):
        cfg = _functional_config(model)
        inputs = _io_names(cfg["input_layers"])
        for entry in cfg["layers"]:
            layer = model.get_layer(entry["name"])
            key = scope + layer.name
            nodes = entry.get("inbound_nodes", [])
            if len(nodes) > 1:
                raise unsupported(layer, "it is called more than once (a shared layer)", key)
            inbound = [self.alias[scope + n] for n in (_inbound(nodes[0]) if nodes else [])]
            if feeds is not None and layer.name in inputs:  # a nested model's input: what feeds it
                self.alias[key] = feeds[inputs.index(layer.name)]
                continue
            if _is_nested(layer):
                self.nested(layer, key, inbound, trainable and layer.trainable)
                continue
            self.layer(layer, entry, key, inbound, trainable and layer.trainable)
        return [self.alias[scope + n] for n in inputs], [self.alias[scope + n] for n in _io_names(cfg["output_layers"])]

    def nested(self, model, key, inbound, trainable):
        _, outputs = self.walk(model, key + "/", inbound, trainable)
        if len(outputs) != 1:
            raise unsupported(model, "a nested model with more than one output", key)
        self.alias[key] = outputs[0]

    def layer(self, layer, entry, key, inbound, trainable):
        kind = _kind(layer)
        if kind is None:
            raise unsupported(layer, where=key)
        data_format = entry["config"].get("data_format")
        if data_format not in (None, "channels_last"):
            raise unsupported(layer, f"data_format={data_format!r}; only channels_last is supported", key)
        if LAYERS[kind].dropped:
            if len(inbound) != 1:
                raise unsupported(layer, "a training-only layer with more than one input", key)
            self.alias[key] = inbound[0]
            return
        name = self.unique(layer.name, key)
        record = {"name": name, "class_name": kind, "config": structural_config(layer, kind, entry["config"]),
                  "inbound": inbound, "weights": {}, "trainable": bool(trainable), "path": key}
        if kind == "PadShortcut":  # its fixed 0/1 kernel is an attribute, not a variable
            self.weights[f"{name}::kernel"] = np.asarray(layer.kernel, np.float32)
            record["weights"]["kernel"] = f"{name}::kernel"
        for var in layer.weights:
            npz_key = f"{name}::{var.name}"
            self.weights[npz_key] = np.asarray(keras.ops.convert_to_numpy(var), np.float32)
            record["weights"][var.name] = npz_key
        self.layers.append(record)
        self.alias[key] = name

    def unique(self, name, key):
        """The outer model's layers keep their names; an inner layer named like any other gets its
        models' names as a prefix ("mid_core_conv")."""
        if "/" in key and (name in self.taken or name in self.reserved):
            name = key.replace("/", "_")
        if name in self.taken:
            raise QATError(f"two layers would both be named {name!r} in the flattened QAT graph")
        self.taken.add(name)
        return name


def describe(model):
    """(graph dict, {npz key: array}) for a Keras 3 functional model, nested models flattened."""
    flat = Flattener()
    flat.reserved = {layer.name for layer in model.layers}
    inputs, outputs = flat.walk(model)
    graph = {"name": model.name, "inputs": inputs, "outputs": outputs, "layers": flat.layers}
    return graph, flat.weights


def all_layers(model):
    """Every layer, those of nested models included (depth first)."""
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from all_layers(layer)


def float32_model(model):
    """`model` itself when it computes in float32, else a float32 copy with the same weights (a
    mixed-precision run is compared and translated in float32: the tf_keras side is float32)."""
    if all(getattr(layer.dtype_policy, "compute_dtype", "float32") == "float32" for layer in all_layers(model)):
        return model
    cfg = model.get_config()

    def to_float32(node):
        if isinstance(node, dict):
            if isinstance(node.get("config"), dict) and "dtype" in node["config"]:
                node["config"]["dtype"] = "float32"
            for value in node.values():
                to_float32(value)
        elif isinstance(node, list):
            for value in node:
                to_float32(value)

    to_float32(cfg["layers"])
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
