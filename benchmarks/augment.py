"""Images/s of the full CIFAR augmentation policy in tf.data, kclassify against keras-cv and
Keras core layers, in one run on the same images. Prints JSON (a measurement, not a test).

Policy: pad 4 + random crop + flip (per image), AutoAugment CIFAR-10 or RandAugment(2, 9)
(per image), Cutout 16 px (per image), batch 128, CutMix (alpha 1, per batch). kclassify runs
the policy and Cutout either on single images before batching or on the batch after it (each
image still draws its own ops); both are reported.
keras-cv has no AutoAugment, so the like-for-like comparison is the RandAugment policy.

    python benchmarks/augment.py [--images 8192] [--batches 40]
"""
import argparse
import json
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kclassify.augment.basic import pad_crop  # noqa: E402
from kclassify.augment.mixing import cutmix  # noqa: E402
from kclassify.augment.registry import AUGMENTS  # noqa: E402

BATCH = 128
AUTOTUNE = tf.data.AUTOTUNE


def source(images, labels):
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).repeat()
    return ds.shuffle(2048, seed=0)


def kclassify_pipeline(images, labels, policy, placement="batch"):
    """Pad-crop-flip per image (augment/basic.py, before batching); the policy and Cutout per
    image either before batching (placement="image") or on the batch (placement="batch": the
    same per-image draws, each op run once on the images that drew it); CutMix per batch."""
    middle = AUGMENTS.get("autoaugment")(policy="cifar10") if policy == "autoaugment" else \
        AUGMENTS.get("randaugment")(n=2, m=9)
    hole = AUGMENTS.get("cutout")(n_holes=1, length=16)

    def per_image(x, y):
        x = tf.image.random_flip_left_right(pad_crop(x, 4, "reflect"))
        return (hole(middle(x)) if placement == "image" else x), y

    def per_batch(x, y):
        if placement == "batch":
            x = hole(middle(x))
        return cutmix(tf.cast(x, tf.float32), tf.one_hot(y, 10), alpha=1.0)

    ds = source(images, labels).map(per_image, num_parallel_calls=AUTOTUNE, deterministic=False)
    ds = ds.batch(BATCH, drop_remainder=True).map(per_batch, num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


def layer_pipeline(images, labels, layers, cut):
    """Batches padded by 4 (reflect), then the augmentation layers, then the CutMix layer."""
    def per_batch(x, y):
        x = tf.pad(tf.cast(x, tf.float32), [[0, 0], [4, 4], [4, 4], [0, 0]], mode="REFLECT")
        for layer in layers:
            x = layer(x, training=True)
        out = cut({"images": x, "labels": tf.one_hot(y, 10)}, training=True)
        return out["images"], out["labels"]

    ds = source(images, labels).batch(BATCH, drop_remainder=True)
    return ds.map(per_batch, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)


def keras_cv_pipeline(images, labels):
    import keras_cv

    layers = [keras_cv.layers.RandomFlip("horizontal"),
              keras_cv.layers.RandomCrop(32, 32),
              keras_cv.layers.RandAugment(value_range=(0, 255), augmentations_per_image=2, magnitude=0.9),
              keras_cv.layers.RandomCutout(0.5, 0.5, fill_mode="constant", fill_value=128)]
    cut = keras_cv.layers.CutMix(alpha=1.0)
    return layer_pipeline(images, labels, layers, cut)


def keras_core_pipeline(images, labels):
    import keras

    # Keras core has no Cutout: RandomErasing with scale 0.25 (a 16x16 area) stands in.
    # RandomCrop and RandAugment draw one set of parameters per batch (FACTS.md).
    layers = [keras.layers.RandomFlip("horizontal"),
              keras.layers.RandomCrop(32, 32),
              keras.layers.RandAugment(value_range=(0, 255), num_ops=2, factor=0.9),
              keras.layers.RandomErasing(factor=1.0, scale=(0.25, 0.25), fill_value=128, value_range=(0, 255))]
    cut = keras.layers.CutMix(factor=1.0)
    return layer_pipeline(images, labels, layers, cut)


def images_per_second(ds, batches, warmup=5):
    it = iter(ds)
    for _ in range(warmup):  # tracing, thread start-up and the shuffle buffer fill
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return round(batches * BATCH / (time.perf_counter() - start), 1)


def measure(name, build, batches, results):
    try:
        results[name] = images_per_second(build(), batches)
    except ImportError as err:
        results[name] = f"missing: {err}"
    except Exception as err:  # a broken competitor is a reported figure, not a crash
        results[name] = f"failed: {type(err).__name__}: {str(err)[:200]}"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=8192)
    parser.add_argument("--batches", type=int, default=40)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(args.images, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=args.images).astype(np.int32)

    res = {}
    for policy in ("randaugment", "autoaugment"):
        for placement in ("batch", "image"):
            measure(f"kclassify_{policy}_{placement}",
                    lambda: kclassify_pipeline(images, labels, policy, placement), args.batches, res)
    measure("keras_cv_randaugment", lambda: keras_cv_pipeline(images, labels), args.batches, res)
    measure("keras_core_randaugment", lambda: keras_core_pipeline(images, labels), args.batches, res)
    ratio = {}
    for mine in ("kclassify_randaugment_batch", "kclassify_randaugment_image"):
        for other in ("keras_cv_randaugment", "keras_core_randaugment"):
            if isinstance(res[other], float) and isinstance(res[mine], float):
                ratio[f"{mine}/{other}"] = round(res[mine] / res[other], 2)
    print(json.dumps({"images_per_second": res, "ratio": ratio, "batch": BATCH, "image": [32, 32, 3],
                      "data": f"{args.images} synthetic uniform-noise uint8 images",
                      "timed_batches": args.batches, "cpus": os.cpu_count(), "tensorflow": tf.__version__,
                      "machine": platform.processor() or platform.machine()}, indent=2))


if __name__ == "__main__":
    main()
