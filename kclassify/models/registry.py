"""The model registry, and the one way to register a model: a named variant is a family's builder
plus the fixed arguments of its row (timm's small registered function per variant over one
builder). A user's model.params may still override any option. Importing kclassify.models
registers every family."""
from kclassify.registry import Registry

MODELS = Registry("model")


def register(name, builder, kind, /, slow=False, input_size=32, params_of=None, info=None, **fixed):
    """Register `name` = builder(num_classes, input_shape, **fixed, **user options).

    `kind`: the family shown in the catalogue; `input_size`: the size the network is designed for
    (32 for CIFAR nets, 224 for ImageNet ones), used by profiles and tests; `params_of`: the
    function whose signature lists the options (default: the builder); `info`: more metadata
    (a fine-tuning backbone's family, whether the registry-wide tests build it)."""

    def build(num_classes, input_shape, **options):
        return builder(num_classes=num_classes, input_shape=input_shape, **{**fixed, **options})

    build.__name__ = name
    build.__doc__ = f"{name}: {builder.__name__}({', '.join(f'{k}={v!r}' for k, v in fixed.items())})."
    MODELS.add(name, build, family=kind, params_of=params_of or builder, slow=slow, input_size=input_size,
               **(info or {}))
