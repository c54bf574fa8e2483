"""Model profiles: parameters, multiply-accumulates per layer, activation memory, MicroNet score.

MACs count the layers that do the arithmetic: convolutions (grouped included), depthwise
convolutions, dense layers, and the squeeze-and-excitation rescale (one multiply per element);
the SE's own 1x1 convs count under "se" too. Normalization, activations, pooling and adds are
not counted, as in the papers' figures (ResNet-50: 4.1G at 224x224). The MicroNet score is
params / 36.5M + ops / 10.49B with ops = 2 x MACs; WRN-28-10 at 32x32 scores about 2.0.
"""
import json
from pathlib import Path

import keras
import numpy as np

from kclassify.models import build_model, MODELS
from kclassify.models.saving import load_model
from kclassify.registry import suggest, UnknownName

MICRONET_PARAMS = 36.5e6
MICRONET_OPS = 10.49e9


def _size(shape):
    return int(np.prod([d for d in shape if d is not None]))


KINDS = {"Conv2D": "conv", "DepthwiseConv2D": "depthwise", "SeparableConv2D": "conv", "Dense": "dense",
         "Multiply": "se"}


def _kind(layer):
    """The Keras class a layer is (or derives from: the whitening stem is a Conv2D)."""
    return next((c.__name__ for c in type(layer).__mro__ if c.__name__ in KINDS), None)


def _category(layer):
    if "_se_" in layer.name:
        return "se"
    return KINDS.get(_kind(layer))


def layer_macs(layer):
    """Multiply-accumulates of one built layer for one image (0 for layers without arithmetic)."""
    kind = _kind(layer)
    out = layer.output.shape
    if kind == "Conv2D":
        kh, kw = layer.kernel_size
        return _size(out[1:]) * kh * kw * layer.input.shape[-1] // layer.groups
    if kind == "DepthwiseConv2D":
        kh, kw = layer.kernel_size
        return _size(out[1:]) * kh * kw
    if kind == "SeparableConv2D":
        kh, kw = layer.kernel_size
        return _size(out[1:-1]) * layer.input.shape[-1] * (kh * kw * layer.depth_multiplier + out[-1])
    if kind == "Dense":
        return _size(layer.input.shape[1:]) * layer.units
    if kind == "Multiply" and _category(layer) == "se":  # channel gate times feature map
        return _size(out[1:])
    return 0


def _layers(model):
    """Every leaf layer, descending into nested models (a backbone inside a fine-tuned model)."""
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:
            yield from _layers(layer)
        else:
            yield layer


def _outputs(layer):
    out = layer.output
    return out if isinstance(out, (list, tuple)) else [out]


def profile_model(model):
    """The profile of a built Keras model as a dict (see module docstring)."""
    trainable = sum(_size(v.shape) for v in model.trainable_weights)
    total = sum(_size(v.shape) for v in model.weights)
    rows, by_kind, act_bytes, peak = [], {}, 0, 0
    for layer in _layers(model):
        macs = layer_macs(layer)
        if macs:
            kind = _category(layer) or "other"
            by_kind[kind] = by_kind.get(kind, 0) + macs
            rows.append({"layer": layer.name, "kind": kind, "macs": macs})
        size = sum(_size(t.shape[1:]) * np.dtype(t.dtype).itemsize for t in _outputs(layer))
        act_bytes += size
        peak = max(peak, size)
    macs = sum(by_kind.values())
    return {"name": model.name, "input_shape": list(model.input_shape[1:]), "classes": model.output_shape[-1],
            "params_trainable": trainable, "params_total": total, "macs": macs, "macs_by_kind": by_kind,
            "activation_bytes": act_bytes, "largest_activation_bytes": peak,
            "micronet_score": micronet_score(trainable, macs), "layers": rows}


def micronet_score(params, macs):
    """MicroNet challenge score, relative to WRN-28-10 (36.5M params, 10.49G math ops)."""
    return params / MICRONET_PARAMS + 2 * macs / MICRONET_OPS


def load_or_build(name_or_file, input_size=None, num_classes=100):
    """A registered model built at `input_size` (default: the size it is designed for), or a
    saved .keras model."""
    if name_or_file in MODELS:
        size = input_size or MODELS.info(name_or_file).get("input_size", 32)
        return build_model(name_or_file, num_classes, (size, size, 3))
    if Path(name_or_file).is_file():
        return load_model(name_or_file)

    raise UnknownName(f"{name_or_file!r} is neither a registered model nor a file"
                      f"{suggest(name_or_file, MODELS.names())}")


def _human(n, unit=""):
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}{unit}"
    return f"{n}{unit}"


def format_profile(p):
    """The profile as printable lines."""
    lines = [f"model        {p['name']}  input {'x'.join(map(str, p['input_shape']))}  classes {p['classes']}",
             f"params       {p['params_trainable']:,} trainable, {p['params_total']:,} total",
             f"MACs         {_human(p['macs'])} ({p['macs']:,})",
             *(f"  {kind:<10} {_human(v)}" for kind, v in sorted(p["macs_by_kind"].items())),
             f"activations  {_human(p['activation_bytes'], 'B')} at batch 1 (all layer outputs), "
             f"largest {_human(p['largest_activation_bytes'], 'B')}",
             f"MicroNet     {p['micronet_score']:.3f}  (params/36.5M + 2*MACs/10.49G)"]
    return lines


def run_profile(name_or_file, input_size=None, num_classes=100, json_out=None, echo=print):
    """Profile a registered model or a .keras file; print it, optionally write JSON; return it."""
    model = load_or_build(name_or_file, input_size, num_classes)
    result = profile_model(model)
    for line in format_profile(result):
        echo(line)
    if json_out:
        Path(json_out).write_text(json.dumps(result, indent=2))
    return result


def models_table(names=None, include_slow=True):
    """One row per registered model at its design size (CIFAR nets at 32x32 with 100 classes,
    ImageNet nets at 224x224 with 1000): name, family, input size, params, MACs."""

    rows = []
    for name in names or MODELS.names():
        info = MODELS.info(name)
        if (info.get("slow") and not include_slow) or info.get("needs_file"):
            continue
        row = {"name": name, "family": info.get("family", "")}
        # Entries that state no design size are tried at 32x32, then at 224x224 (backbones
        # such as InceptionV3 refuse small inputs); a model that builds at neither is listed
        # with its error rather than stopping the table.
        for size in [info["input_size"]] if "input_size" in info else [32, 224]:
            classes = 1000 if size >= 224 else 100
            try:
                p = profile_model(build_model(name, classes, (size, size, 3)))
            except Exception as exc:  # noqa: BLE001 (reported in the row)
                row["error"] = str(exc).splitlines()[0][:120]
                continue
            row.update(input_size=size, classes=classes, params=p["params_trainable"], macs=p["macs"],
                       micronet_score=p["micronet_score"], error=None)
            break
        rows.append(row)
        keras.backend.clear_session()  # keep memory flat over ~60 builds
    return rows


def format_table(rows):
    lines = [f"{'name':<25} {'family':<16} {'input':>5} {'classes':>7} {'params':>9} {'MACs':>9}"]
    for r in rows:
        if r.get("error"):
            lines.append(f"{r['name']:<25} {r['family']:<16} does not build: {r['error']}")
        else:
            lines.append(f"{r['name']:<25} {r['family']:<16} {r['input_size']:>5} {r['classes']:>7} "
                         f"{_human(r['params']):>9} {_human(r['macs']):>9}")
    return lines
