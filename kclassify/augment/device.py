"""The recipe's batch preparation inside a compiled step on any Keras backend, in `keras.ops`: the
input stream hands the step uint8 images, int labels and the alternating-flip mask, and this turns
them into what `train_step` takes (float pixels, one-hot targets, smoothed and mixed), with the
same arithmetic as the host stream (augment/basic.py, augment/erasing.py, augment/mixing.py,
data/pipeline.py). Randomness comes from a key per step (the step's index folded into the run's
seed), so a resumed run draws what it would have drawn.

Device versions exist for: crop_pad (reflect or constant), flip (random or alternating), the
registered op `cutout`, MixUp/CutMix (with mix_prob and mix_switch_prob), label smoothing (both
formulas). Anything else is refused by name (`check_device_recipe`), before training starts."""
import keras
from keras import ops

from kclassify.errors import RecipeError

DEVICE_OPS = {"cutout"}
CUTOUT_FILL = 128  # augment/erasing.py's value, kept there too: the tf_keras QAT worker imports that module
# and cannot import Keras 3, which this module needs


def check_device_recipe(recipe):
    """What the device preparation cannot do is refused by name."""
    a, t = recipe.augment, recipe.train
    for op in a.ops:
        if op["name"] not in DEVICE_OPS:
            raise RecipeError(f"augment.ops {op['name']!r} has no device version (runtime.augment_on device; the host "
                              f"version runs in TensorFlow's tf.data); device versions: {sorted(DEVICE_OPS)}, crop_pad, "
                              "flip, MixUp/CutMix, label smoothing")
    for name, on in (("augment.random_resized_crop", a.random_resized_crop), ("train.class_balance",
                     t.class_balance != "none")):
        if on:
            raise RecipeError(f"{name} has no device version (runtime.augment_on device): leave it out, or "
                              "augment on the host (runtime.augment_on host, with TensorFlow installed)")


def device_preparer(recipe, num_classes, mix=True):
    """prepare(images uint8, labels int, flip mask, key) -> (float images, float targets)."""
    a, t = recipe.augment, recipe.train
    cutouts = [{k: v for k, v in op.items() if k != "name"} for op in a.ops if op["name"] == "cutout"]
    mixing = mix and (a.mixup_alpha > 0 or a.cutmix_alpha > 0)

    def prepare(images, labels, mask, key):
        # flip, translate, mix; Cutout's keys sit apart from what mix_batch folds from keys[2] (7 to 20)
        keys = [fold(key, i) for i in range(3)] + [fold(key, 64 + i) for i in range(len(cutouts))]
        x = images
        if a.flip == "alternate":
            x = flip(x, mask)
        elif a.flip:
            x = flip(x, keras.random.uniform((ops.shape(x)[0],), seed=keys[0]) < 0.5)
        if a.crop_pad:
            x = translate(x, a.crop_pad, a.pad_mode, keys[1])
        for i, params in enumerate(cutouts):
            x = cutout(x, keys[3 + i], **params)
        x = ops.cast(x, "float32")
        y = smooth(ops.one_hot(ops.cast(labels, "int32"), num_classes), t.label_smoothing, t.label_smoothing_mode)
        if mixing:
            x, y = mix_batch(x, y, a, keys[2])
        return x, y

    return prepare


def fold(key, i):
    """The key of the i-th draw of a step: (seed word + i * an odd constant, step). Within one run the
    seed is fixed, so distinct draws of distinct steps never share a key."""
    return key + ops.convert_to_tensor([2654435761 * (i + 1) % 2 ** 32, 0], "uint32")


def flip(images, mask):
    """Mirror the images where `mask` (one bool per image) is true."""
    return ops.where(ops.reshape(mask, (-1, 1, 1, 1)), ops.flip(images, axis=2), images)


def translate(images, pad, mode, key):
    """Pad by `pad` pixels (reflect or zero), then a random window of the original size per image."""
    n, h, w = ops.shape(images)[0], images.shape[1], images.shape[2]
    padded = ops.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="reflect" if mode == "reflect" else "constant")
    offsets = keras.random.randint((n, 2), 0, 2 * pad + 1, seed=key)
    rows = offsets[:, :1] + ops.arange(h)[None, :]  # [n, h]
    cols = offsets[:, 1:] + ops.arange(w)[None, :]  # [n, w]
    picked = ops.take_along_axis(padded, ops.reshape(rows, (-1, h, 1, 1)), axis=1)
    return ops.take_along_axis(picked, ops.reshape(cols, (-1, 1, w, 1)), axis=2)


def box_mask(height, width, top, left, box_h, box_w):
    """[..., H, W, 1] bool, True inside each box (int tensors of one shape [...])."""
    ys, xs = ops.arange(height), ops.arange(width)
    rows = (ys >= top[..., None]) & (ys < (top + box_h)[..., None])
    cols = (xs >= left[..., None]) & (xs < (left + box_w)[..., None])
    return (rows[..., :, None] & cols[..., None, :])[..., None]


def cutout(images, key, n_holes=1, length=16, fill=CUTOUT_FILL):
    """`n_holes` squares of side `length` per image, centers anywhere, clipped at the border."""
    n, h, w = ops.shape(images)[0], images.shape[1], images.shape[2]
    centers = keras.random.randint((n, n_holes, 2), 0, max(h, w), seed=key) % ops.convert_to_tensor([h, w])
    side = ops.full((n, n_holes), length, "int32")
    holes = ops.any(box_mask(h, w, centers[..., 0] - length // 2, centers[..., 1] - length // 2, side, side), axis=1)
    return ops.where(holes, ops.cast(fill, images.dtype), images)


def smooth(y, eps, mode):
    """Label smoothing on one-hot targets; both formulas keep each row summing to 1."""
    if not eps:
        return y
    k = y.shape[-1]
    if mode == "uniform":
        return y * (1.0 - eps) + eps / k
    return y * (1.0 - eps) + (1.0 - y) * eps / (k - 1)


def beta(alpha, key):
    return keras.random.beta((), alpha, alpha, seed=key)


def mix_batch(x, y, cfg, key):
    """timm's batch Mixup: with probability mix_prob the batch is mixed, by CutMix with probability
    mix_switch_prob when both alphas are set; each image with its mirror in the batch."""
    draws = keras.random.uniform((2,), seed=fold(key, 7))
    use_cutmix = {(True, False): True, (False, True): False}.get((cfg.cutmix_alpha > 0, cfg.mixup_alpha > 0))
    cut = draws[0] < cfg.mix_switch_prob if use_cutmix is None else use_cutmix
    mixed_up = mixup(x, y, cfg.mixup_alpha, fold(key, 8)) if cfg.mixup_alpha > 0 else (x, y)
    cut_in = cutmix(x, y, cfg.cutmix_alpha, fold(key, 9)) if cfg.cutmix_alpha > 0 else (x, y)
    on = draws[1] < cfg.mix_prob
    return tuple(ops.where(on, ops.where(cut, c, m), plain) for c, m, plain in zip(cut_in, mixed_up, (x, y)))


def mixup(x, y, alpha, key):
    lam = beta(alpha, key)
    return lam * x + (1.0 - lam) * ops.flip(x, axis=0), lam * y + (1.0 - lam) * ops.flip(y, axis=0)


def cutmix(x, y, alpha, key):
    """A box of each image's partner pasted in; the label weight is the pasted area actually shown."""
    h, w = x.shape[1], x.shape[2]
    lam = beta(alpha, key)
    ratio = ops.sqrt(1.0 - lam)
    cut_h, cut_w = ops.cast(h * ratio, "int32"), ops.cast(w * ratio, "int32")
    centre = keras.random.randint((2,), 0, max(h, w), seed=fold(key, 1)) % ops.convert_to_tensor([h, w])
    top, bottom = ops.clip(centre[0] - cut_h // 2, 0, h), ops.clip(centre[0] + cut_h // 2, 0, h)
    left, right = ops.clip(centre[1] - cut_w // 2, 0, w), ops.clip(centre[1] + cut_w // 2, 0, w)
    inside = box_mask(h, w, top, left, bottom - top, right - left)  # [H, W, 1]
    mixed = ops.where(inside[None], ops.flip(x, axis=0), x)
    shown = 1.0 - ops.cast((bottom - top) * (right - left), "float32") / float(h * w)
    return mixed, shown * y + (1.0 - shown) * ops.flip(y, axis=0)


def step_key(seed, step):
    """The key of global step `step` (a traced int): the run's seed and the step, as uint32."""
    return ops.stack([ops.cast(seed % 2 ** 32, "uint32"), ops.cast(step, "uint32")])

