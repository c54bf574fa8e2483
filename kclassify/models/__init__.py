"""Model families, registered by name. `build_model` is the one entry point."""
import inspect

from kclassify.errors import RecipeError
from kclassify.models import (  # noqa: F401  (registration)
    airbench, densenet, googlenet, mobilenet_v3, preact_resnet, resnet9, resnet_cifar, resnet_imagenet, resnext, squeezenet, vgg,
    wide_resnet)
from kclassify.models import applications  # noqa: F401,E402  (Keras Applications backbones, for finetune)
from kclassify.models import keras_hub  # noqa: F401,E402  (KerasHub presets; keras-hub imported only when built)
from kclassify.models.registry import MODELS
from kclassify.registry import suggest
from kclassify.layers.dropblock import DropBlock2D

_FIXED = ("num_classes", "input_shape", "mean", "std", "bn_momentum")


def model_params(name):
    """The tunable keyword parameters of a registered model (what `model.params` may hold)."""
    fn = MODELS.info(name).get("params_of") or MODELS.get(name)
    return [p for p in inspect.signature(fn).parameters if p not in _FIXED and p not in ("depth", "k", "family", "name")]


def build_model(name, num_classes, input_shape, mean=None, std=None, bn_momentum=0.9, **params):
    """Build registered model `name`; an unknown parameter is named with a close match."""
    builder = MODELS.get(name)
    allowed = model_params(name)
    for key in params:
        if key not in allowed:
            raise RecipeError(f"model {name!r} has no parameter {key!r} in model.params{suggest(key, allowed)}")
    if isinstance(params.get("drop_block"), dict):
        params["drop_block"] = dropblock_hook(**params["drop_block"])
    return builder(num_classes=num_classes, input_shape=tuple(input_shape), mean=mean, std=std,
                   bn_momentum=bn_momentum, **params)


def dropblock_hook(keep_prob=0.9, block_size=7):
    """Recipe form `drop_block: {keep_prob: 0.9, block_size: 7}` -> the builders' hook, which
    inserts a DropBlock2D after each branch conv of the last two stages. Training moves
    keep_prob from 1 to its target (DropBlockSchedule, added by fit when the model has any)."""
    def hook(x, name):
        size = min(block_size, int(x.shape[1]))  # the paper's 7 does not fit an 8x8 CIFAR map
        return DropBlock2D(keep_prob=keep_prob, block_size=size, name=f"{name}_dropblock")(x)

    return hook


def as_float32(model):
    """The same network and weights computing in float32: what a mixed-precision run saves and
    exports (TFLite converts float32 graphs; bf16/fp16 ops would need Flex)."""
    if all(layer.dtype_policy.name == "float32" for layer in model._flatten_layers()):
        return model
    clone = model.__class__.from_config(_float32_config(model.get_config()))
    clone.set_weights(model.get_weights())
    return clone


def _float32_config(config):
    if isinstance(config, dict):
        if config.get("class_name") in ("DTypePolicy", "FloatDTypePolicy"):
            return "float32"
        return {k: ("float32" if k == "dtype" and isinstance(v, (dict, str)) and _is_policy(v) else _float32_config(v))
                for k, v in config.items()}
    if isinstance(config, list):
        return [_float32_config(v) for v in config]
    return config


def _is_policy(value):
    if isinstance(value, str):
        return value.startswith("mixed_")
    return value.get("class_name") in ("DTypePolicy", "FloatDTypePolicy")
