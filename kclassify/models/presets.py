"""Registering named variants of a family builder: a variant is the builder plus fixed
arguments (its row of the family's table). Users may still override any option."""
from kclassify.models.registry import MODELS


def register(name, builder, family, slow=False, input_size=32, params_of=None, **fixed):
    """Register `name` = builder(**fixed, **user options). `input_size` is the size the
    network is designed for (32 for CIFAR nets, 224 for ImageNet ones): profiles use it.
    `params_of`: the function whose signature lists the options (default: builder)."""

    def build(num_classes, input_shape, **options):
        return builder(num_classes=num_classes, input_shape=input_shape, **{**fixed, **options})

    build.__name__ = name
    build.__doc__ = f"{name}: {builder.__name__}({', '.join(f'{k}={v!r}' for k, v in fixed.items())})."
    MODELS.add(name, build, family=family, params_of=params_of or builder, slow=slow, input_size=input_size)
