"""Pretrained backbones from Keras Applications, wrapped as kclassify models.

The wrapped model takes raw 0..255 RGB pixels like every kclassify model: optional upscaling
(`input_size`) and the backbone's own preprocessing are layers inside the graph, the backbone is
a nested model named "backbone", and the head is pooling / dropout / optional L2 normalization /
dense. `weights` is None, "imagenet" (needs a network: fails fast offline) or a local file:
.h5 / .weights.h5 Keras Applications weights, or a kclassify .keras model whose layers up to
its pooling layer become the backbone.
"""
from pathlib import Path

import keras
from keras import layers

from kclassify.errors import ModelFileError
from kclassify.models.blocks import classification_head, match_channels
from kclassify.models.keras_hub import BLOCKS as KERAS_HUB_BLOCKS
from kclassify.models.registry import register
from kclassify.models.saving import load_model

# name: (keras.applications attribute, preprocessing, block regex on the backbone's layer names)
# Preprocessing modes follow keras.applications.*.preprocess_input: "tf" scales to [-1, 1],
# "caffe" is BGR minus the ImageNet mean, "torch" is ImageNet mean/std, "none" means the
# application already contains its preprocessing layers.
FAMILIES = {
    "mobilenet": ("MobileNet", "tf", r"conv_(?:dw|pw)_(\d+)"),
    "mobilenet_v2": ("MobileNetV2", "tf", r"block_(\d+)_|expanded_conv_()"),
    "mobilenet_v3_small": ("MobileNetV3Small", "none", r"expanded_conv_?(\d*)_"),
    "mobilenet_v3_large": ("MobileNetV3Large", "none", r"expanded_conv_?(\d*)_"),
    **{f"efficientnet_b{i}": (f"EfficientNetB{i}", "none", r"block(\d[a-z])_") for i in range(8)},
    **{f"efficientnet_v2_{v}": (f"EfficientNetV2{v.upper()}", "none", r"block(\d+[a-z])_")
       for v in ("b0", "b1", "b2", "b3", "s", "m", "l")},
    **{f"resnet{d}": (f"ResNet{d}", "caffe", r"(conv\d_block\d+)_") for d in (50, 101, 152)},
    **{f"resnet{d}_v2": (f"ResNet{d}V2", "tf", r"(conv\d_block\d+)_") for d in (50, 101, 152)},
    **{f"densenet{d}": (f"DenseNet{d}", "torch", r"(conv\d_block\d+)_|(pool\d)_") for d in (121, 169, 201)},
    **{f"convnext_{s}": (f"ConvNeXt{s.capitalize()}", "none", r"stage_(\d+_block_\d+)_")
       for s in ("tiny", "small", "base", "large")},
    "xception": ("Xception", "tf", r"block(\d+)_"),
    "inception_v3": ("InceptionV3", "tf", r"^(mixed\d+)$"),
    "vgg16": ("VGG16", "caffe", r"block(\d)_"),
}
KCLASSIFY_BLOCKS = r"(stage\d+_block\d+)_"
IMAGENET_MEAN = [123.675, 116.28, 103.53]
IMAGENET_STD = [58.395, 57.12, 57.375]


def preprocessing(x, mode):
    if mode == "tf":
        return layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess")(x)
    if mode == "torch":
        return layers.Normalization(mean=IMAGENET_MEAN, variance=[s * s for s in IMAGENET_STD], name="preprocess")(x)
    if mode == "caffe":
        x = layers.Normalization(mean=IMAGENET_MEAN, variance=[1.0, 1.0, 1.0], name="preprocess")(x)
        # RGB -> BGR as a fixed 3x3 permutation on the channel axis (a TFLite builtin).
        to_bgr = layers.Dense(3, use_bias=False, trainable=False, name="to_bgr",
                              kernel_initializer=keras.initializers.Constant([[0, 0, 1], [0, 1, 0], [1, 0, 0]]))
        return to_bgr(x)
    return x


def application(family, size, weights, alpha):
    """The headless Keras Application, with weights from a local file or the hub."""
    attr, _, _ = FAMILIES[family]
    kwargs = {"include_top": False, "input_shape": (size, size, 3), "weights": weights}
    if family.startswith("mobilenet"):
        kwargs["alpha"] = alpha
    try:
        net = getattr(keras.applications, attr)(**kwargs)
    except Exception as exc:
        if weights == "imagenet":
            raise ModelFileError(
                f"could not fetch ImageNet weights for {attr} ({type(exc).__name__}: {str(exc)[:120]}). "
                "Offline, download the no-top .h5 file elsewhere and set model.params.weights=/path/file.h5") from None
        raise ModelFileError(f"could not build {attr} with weights {weights!r}: {str(exc)[:300]}") from None
    net.name = "backbone"
    return net


def kclassify_backbone(path):
    """A saved kclassify model cut at its pooling layer: the layers before it are the backbone."""
    model = load_model(path)
    try:
        features = model.get_layer("head_pool").input
    except ValueError:
        raise ModelFileError(f"{path} has no 'head_pool' layer to cut the backbone at") from None
    return keras.Model(model.input, features, name="backbone")


def backbone_model(family, num_classes, input_shape, mean=None, std=None, bn_momentum=0.9, weights=None,
                   input_size=None, alpha=1.0, pooling="avg", dropout=0.0, l2_normalize=False):
    """Backbone `family` (a FAMILIES name, or "kclassify" with weights=PATH.keras) plus a head."""
    inputs = keras.Input(shape=tuple(input_shape), name="pixels")
    x = inputs
    if family == "kclassify":
        backbone = kclassify_backbone(weights)
        size = backbone.input_shape[1]
    else:
        size = input_size or input_shape[0]
        weights = _weights_arg(weights)
        backbone = application(family, size, weights, alpha)
    x = match_channels(x, backbone.input_shape[-1], f"backbone keras_{family}")
    if x.shape[1] != size or x.shape[2] != size:
        x = layers.Resizing(size, size, interpolation="bilinear", name="upscale")(x)
    if family != "kclassify":
        x = preprocessing(x, FAMILIES[family][1])
    outputs = classification_head(backbone(x), num_classes, pooling, dropout, l2_normalize)
    return keras.Model(inputs, outputs, name=f"{family}_finetune")


def _weights_arg(weights):
    if weights in (None, "imagenet"):
        return weights
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ModelFileError(f"backbone weights file not found: {weights!r}")
    return str(path)


def block_regex(family):
    if family == "keras_hub":
        return KERAS_HUB_BLOCKS
    return KCLASSIFY_BLOCKS if family == "kclassify" else FAMILIES[family][2]


# Keras' own networks: tested by Keras; kclassify's wrapping is tested in test_finetune.py, so
# the registry-wide model tests skip them (generic_tests=False).
for _family in [*FAMILIES, "kclassify"]:
    register(f"keras_{_family}", backbone_model, "applications", slow=True,
             input_size=299 if _family == "inception_v3" else 224, family=_family,
             info={"backbone": _family, "generic_tests": False, "needs_file": _family == "kclassify"})
