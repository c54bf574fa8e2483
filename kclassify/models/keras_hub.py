"""KerasHub image backbones (ResNet, MobileNet, EfficientNet, ViT, DeiT, DINOv2 presets) as a
kclassify model: `model.name: keras_hub`, `model.params.preset: PATH_OR_HANDLE`.

Built like the Keras Applications wrappers (applications.py), so fine-tuning, export and the run
folder treat it the same: raw 0..255 pixels in; an optional Resizing ("upscale") and the preset's
own image preprocessing as a built-in Rescaling layer ("preprocess": the converter's per-channel
scale and offset), so the exported file needs no KerasHub; the preset's backbone, cut at its
feature output, as the nested functional model "backbone"; then the shared head (head_pool ...
head_dense). `qat` takes the backbones made of Keras layers only (ResNet) and refuses the others
(ViT, MobileNet: KerasHub's own layers) by name.
A transformer's token sequence is pooled by its class token (or averaged). `finetune`'s topN
counts the backbone's own blocks (BLOCKS below, one pattern per family).

keras-hub is an optional extra (`pip install "kclassify[hub]"`) imported only when this model is
built; a saved model imports it by itself when Keras loads the backbone's class.
"""
import os
from pathlib import Path

import keras
from keras import layers

from kclassify.errors import ModelFileError, RecipeError
from kclassify.models.blocks import classification_head, match_channels
from kclassify.models.registry import register

# Block names of each KerasHub family, as finetune.groups reads them (one group per block):
# ResNet "stack2_block1_...", MobileNet "block_3_1", EfficientNet "block2a_...", ViT and DeiT
# "transformer_block_4", DINOv2 "layers_7" (the last three are layers inside the encoder layer).
FAMILY_BLOCKS = {
    "ResNetBackbone": r"^(stack\d+_block\d+)_",
    "MobileNetBackbone": r"^(block_\d+(?:_\d+)?)$",
    "EfficientNetBackbone": r"^(block\d+[a-z])_",
    "ViTBackbone": r"^(transformer_block_\d+)$",
    "DeiTBackbone": r"^(transformer_block_\d+)$",
    "DINOV2Backbone": r"^(layers_\d+)$",
}
BLOCKS = "|".join(dict.fromkeys(FAMILY_BLOCKS.values()))
POOLING = ("avg", "max", "token")


def require_keras_hub():
    try:
        import keras_hub
    except ImportError:
        raise RecipeError("model 'keras_hub' needs the optional package keras-hub: "
                          "pip install \"kclassify[hub]\"") from None
    return keras_hub


def is_handle(preset):
    """A hub handle ("kaggle://...", "hf://...", or a bare preset name such as
    "resnet_18_imagenet") rather than a local folder."""
    return "://" in preset or not (os.sep in preset or "/" in preset or preset.startswith(("~", ".")))


def load_preset(preset, load_weights=True):
    """(backbone, image converter) of a local preset folder or a hub handle; fails in seconds
    offline, saying how to point at a folder instead."""
    hub = require_keras_hub()
    if not is_handle(preset):
        folder = Path(preset).expanduser()
        if not (folder / "config.json").is_file():
            raise ModelFileError(f"KerasHub preset folder not found (no config.json in {str(folder)!r})")
        preset = str(folder)
    dtype = keras.mixed_precision.global_policy().name  # the recipe's runtime.precision, not the preset's
    try:
        backbone = hub.models.Backbone.from_preset(preset, load_weights=load_weights, dtype=dtype)
    except Exception as exc:
        if is_handle(preset):
            raise ModelFileError(
                f"could not fetch KerasHub preset {preset!r} ({type(exc).__name__}: {str(exc)[:160]}). Offline, "
                "save it where a network exists (keras_hub.models.ImageClassifier.from_preset(HANDLE)"
                ".save_to_preset(DIR)), copy DIR here and set model.params.preset=DIR") from None
        raise ModelFileError(f"could not load the KerasHub preset in {preset!r}: {str(exc)[:300]}") from None
    try:
        converter = hub.layers.ImageConverter.from_preset(preset)
    except Exception as exc:
        raise ModelFileError(f"preset {preset!r} has no image converter, so its preprocessing is unknown "
                             f"({type(exc).__name__}: {str(exc)[:120]}); save one with the backbone "
                             "(keras_hub.layers.ImageConverter(...).save_to_preset(DIR))") from None
    return backbone, converter


def keras_hub_model(num_classes, input_shape, mean=None, std=None, bn_momentum=0.9, preset=None, load_weights=True,
                    input_size=None, pooling=None, dropout=0.0, l2_normalize=False):
    """A KerasHub preset's backbone (local folder or hub handle) with a classification head.
    `load_weights=False` keeps the architecture with random weights; `input_size` resizes in the
    graph for backbones that take any size (a ViT takes its own); `pooling` is "avg", "max" or,
    for transformers, "token" (the class token, their default)."""
    if not preset:
        raise RecipeError("model 'keras_hub' needs model.params.preset: a KerasHub preset folder or hub handle")
    if pooling not in (None, *POOLING):
        raise RecipeError(f"model.params.pooling {pooling!r}: use one of {', '.join(POOLING)}")
    hub_backbone, converter = load_preset(str(preset), load_weights)
    family = type(hub_backbone).__name__
    if family not in FAMILY_BLOCKS:
        raise RecipeError(f"KerasHub backbone {family} is not an image backbone kclassify knows; "
                          f"known: {', '.join(FAMILY_BLOCKS)}")
    backbone = as_backbone(hub_backbone)
    _, height, width, channels = backbone.input_shape
    if height is None:  # a convolutional net takes any size: the data's, or input_size
        height = width = input_size or input_shape[0]
    elif input_size and input_size != height:
        raise RecipeError(f"the {family} preset takes {height}x{width} images only (model.params.input_size {input_size})")
    inputs = keras.Input(shape=tuple(input_shape), name="pixels")
    x = match_channels(inputs, channels, f"the {family} preset")
    if (x.shape[1], x.shape[2]) != (height, width):
        x = layers.Resizing(height, width, interpolation=converter.interpolation, name="upscale")(x)
    x = preprocessing(x, converter)
    features = backbone(x)
    x, pooled = pool_tokens(features, pooling) if len(features.shape) == 3 else (features, pooling or "avg")
    outputs = classification_head(x, num_classes, pooled, dropout, l2_normalize)
    return keras.Model(inputs, outputs, name=f"keras_hub_{family.removesuffix('Backbone').lower()}_finetune")


def as_backbone(hub_backbone):
    """The nested model "backbone": a plain functional model over the preset's layers when they
    are all Keras' own (the QAT bridge flattens it; the saved file loads without KerasHub), else
    the KerasHub model itself (a ViT's layers rebuild only through the backbone's own config)."""
    if all(type(layer).__module__.startswith("keras.") for layer in hub_backbone.layers):
        return keras.Model(hub_backbone.input, hub_backbone.output, name="backbone")
    hub_backbone.name = "backbone"
    return hub_backbone


def preprocessing(x, converter):
    """The converter's x * scale + offset (scalars or per channel) as a built-in layer."""
    scale = 1.0 if converter.scale is None else converter.scale
    offset = 0.0 if converter.offset is None else converter.offset
    return layers.Rescaling([float(s) for s in scale] if isinstance(scale, (list, tuple)) else float(scale),
                            [float(o) for o in offset] if isinstance(offset, (list, tuple)) else float(offset),
                            name="preprocess")(x)


def pool_tokens(tokens, pooling):
    """A transformer's (batch, tokens, dim) output -> (batch, dim): its class token (token 0;
    built-ins only: a crop and a flatten) or the average or maximum over the tokens."""
    if pooling in (None, "token"):
        first = layers.Cropping1D((0, tokens.shape[1] - 1), name="head_token")(tokens)
        return layers.Flatten(name="head_pool")(first), None
    pool = {"avg": layers.GlobalAveragePooling1D, "max": layers.GlobalMaxPooling1D}[pooling]
    return pool(name="head_pool")(tokens), None


register("keras_hub", keras_hub_model, "keras_hub", slow=True, input_size=224,
         info={"backbone": "keras_hub", "generic_tests": False, "needs_file": True})
