"""Registry of per-image augmentations: each entry is a factory taking keyword config and
returning a function of uint8 images: one HxWxC image (`dataset.map` before `.batch()`)
or a BxHxWxC batch (after `.batch()`: much faster, every image still draws its own ops).

    fn = AUGMENTS.get("randaugment")(n=2, m=9)

Tests run every entry eagerly and inside tf.data, so a new entry is tested without new code.
"""
from kclassify.augment import color, erasing, policies
from kclassify.registry import Registry

AUGMENTS = Registry("augmentation")


@AUGMENTS.register()
def autoaugment(policy="cifar10"):
    """AutoAugment's learned policy: "cifar10", "svhn" or "imagenet"."""
    policies.POLICIES[policy]  # unknown names fail here, at build time, not inside tf.data
    return lambda image: policies.autoaugment(image, policy)


@AUGMENTS.register()
def randaugment(n=2, m=9.0):
    """RandAugment: n ops per image at level m (0..10)."""
    return lambda image: policies.randaugment(image, n, float(m))


@AUGMENTS.register()
def cutout(n_holes=1, length=16, fill=erasing.CUTOUT_FILL):
    return lambda image: erasing.cutout(image, n_holes, length, fill)


@AUGMENTS.register()
def random_erasing(prob=0.5, area=(0.02, 0.4), aspect=0.3, value="random"):
    return lambda image: erasing.random_erasing(image, prob, tuple(area), aspect, value)


@AUGMENTS.register()
def color_jitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.0):
    return lambda image: color.color_jitter(image, brightness, contrast, saturation, hue)


@AUGMENTS.register()
def rotate(degrees=15.0, fill_mode="reflect", fill=0):
    return lambda image: color.random_rotate(image, degrees, fill_mode, fill)


@AUGMENTS.register()
def grayscale(prob=0.2):
    return lambda image: color.random_grayscale(image, prob)


def chain(specs):
    """One per-image function from [(name, {config}), ...], applied in order; None if empty."""
    return compose([AUGMENTS.get(name)(**(cfg or {})) for name, cfg in specs])


def compose(fns):
    """One function applying `fns` in order; None when there are none."""
    if not fns:
        return None

    def apply(image):
        for fn in fns:
            image = fn(image)
        return image

    return apply
