"""Model families, registered by name. `build_model` is the one entry point."""
import inspect

from kclassify.errors import RecipeError
from kclassify.models import (  # noqa: F401  (registration)
    densenet, googlenet, mobilenet_v3, preact_resnet, resnet9, resnet_cifar, resnet_imagenet, resnext, squeezenet, vgg,
    wide_resnet)
from kclassify.models import applications  # noqa: F401,E402  (Keras Applications backbones, for finetune)
from kclassify.models.registry import MODELS
from kclassify.registry import suggest

_FIXED = ("num_classes", "input_shape", "mean", "std", "bn_momentum")


def model_params(name):
    """The tunable keyword parameters of a registered model (what `model.params` may hold)."""
    fn = MODELS.info(name).get("params_of") or MODELS.get(name)
    return [p for p in inspect.signature(fn).parameters if p not in _FIXED and p not in ("depth", "k")]


def build_model(name, num_classes, input_shape, mean=None, std=None, bn_momentum=0.9, **params):
    """Build registered model `name`; an unknown parameter is named with a close match."""
    builder = MODELS.get(name)
    allowed = model_params(name)
    for key in params:
        if key not in allowed:
            raise RecipeError(f"model {name!r} has no parameter {key!r} in model.params{suggest(key, allowed)}")
    return builder(num_classes=num_classes, input_shape=tuple(input_shape), mean=mean, std=std,
                   bn_momentum=bn_momentum, **params)
