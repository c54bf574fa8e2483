"""Which layers train in a phase: "head", "all", "topN" (the last N blocks of the backbone by
its own structure) or "re:REGEX" (layer names). BatchNorm layers of the backbone stay frozen,
and so in inference mode, unless the recipe trains them: a small fine-tuning batch must not
overwrite the statistics learned on ImageNet."""
import re

from kclassify.errors import RecipeError


def parse_schedule(text):
    """'head:3,top2:3@1e-4,all:6' -> [{'unfreeze': 'head', 'epochs': 3}, ...] (lr after '@')."""
    phases = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        group, sep, rest = item.rpartition(":")
        if not sep or not group:
            raise RecipeError(f"--unfreeze-schedule item {item!r}: expected GROUP:EPOCHS[@LR], e.g. top2:3")
        epochs, _, lr = rest.partition("@")
        try:
            phase = {"unfreeze": group, "epochs": int(epochs)}
            if lr:
                phase["lr"] = float(lr)
        except ValueError:
            raise RecipeError(f"--unfreeze-schedule item {item!r}: epochs must be an integer, lr a number") from None
        check_group(group)
        phases.append(phase)
    if not phases:
        raise RecipeError("--unfreeze-schedule is empty")
    return phases


def check_group(group):
    if group in ("head", "all") or re.fullmatch(r"top\d+", group):
        return
    if group.startswith("re:"):
        try:
            re.compile(group[3:])
            return
        except re.error as exc:
            raise RecipeError(f"bad layer regex {group[3:]!r}: {exc}") from None
    raise RecipeError(f"unknown unfreeze group {group!r}: use head, all, topN (e.g. top2) or re:REGEX")


def units(backbone, pattern):
    """The layers that freeze and train as one: the backbone's own layers, except that a layer
    holding the blocks inside it (a KerasHub transformer's encoder) is opened down to them."""
    rx = re.compile(pattern)

    def opened(layer):
        children = layer._layers  # Keras 3 keeps a layer's direct sublayers here (no public API)
        inside = [sub for sub in layer._flatten_layers(include_self=False) if rx.search(sub.name)]
        if rx.search(layer.name) or not inside:
            return [layer]
        return [unit for child in children for unit in opened(child)]

    return [unit for layer in backbone.layers for unit in opened(layer)]


def backbone_blocks(backbone, pattern):
    """Ordered {block id: [layers]}; layers after the last block (top convs) join the last block,
    layers before the first (the stem) form block 'stem', which only 'all' unfreezes."""
    blocks, current = {}, "stem"
    rx = re.compile(pattern)
    for layer in units(backbone, pattern):
        if not layer.weights:
            continue
        m = rx.search(layer.name)
        if m:
            current = "_".join(g for g in m.groups() if g is not None) or "0"
        blocks.setdefault(current, []).append(layer)
    return blocks


def is_bn(layer):
    return "BatchNormalization" in type(layer).__name__


def apply_phase(model, group, pattern, train_bn=False):
    """Set `trainable` on every layer for this phase; returns the backbone layers unfrozen."""
    backbone = model.get_layer("backbone")
    backbone.trainable = True  # containers first, then each layer on its own
    unfrozen = select(backbone, group, pattern)
    layers = units(backbone, pattern)
    for layer in layers:
        layer.trainable = layer in unfrozen and (train_bn or not is_bn(layer))
        if not train_bn:  # BatchNorm inside a block layer (KerasHub MobileNet) stays frozen too
            for sub in filter(is_bn, layer._flatten_layers(include_self=False)):
                sub.trainable = False
    for layer in model.layers:
        if layer is not backbone:
            layer.trainable = layer.name.startswith("head_") and bool(layer.weights)
    return [layer for layer in layers if layer in unfrozen and layer.trainable and layer.weights]


def select(backbone, group, pattern):
    if group == "head":
        return set()
    if group == "all":
        return set(units(backbone, pattern))
    if group.startswith("re:"):
        rx = re.compile(group[3:])
        return {layer for layer in units(backbone, pattern) if rx.search(layer.name)}
    n = int(group[3:])
    blocks = [b for b in backbone_blocks(backbone, pattern).items() if b[0] != "stem"]
    return {layer for _, layers in blocks[-n:] for layer in layers} if n else set()
