"""Data sources and the two kinds of split they return.

A `Split` holds fixed-size uint8 NHWC arrays in memory (CIFAR-10 is 150 MB: epochs cost no
decoding). A `StreamSplit` (tfrecord.py) streams packed shards for data bigger than
data.cache_gb, or kept above the training size for random-resized-crop. Both offer `labels`,
`len()`, `image_shape`, `take(indices)`, `subset(indices)` and `examples(...)` (an unbatched
tf.data.Dataset of one epoch), so callers use one API. Nothing here imports TensorFlow at import
time. The plug-in sources register themselves when kclassify.data imports them.
"""
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kclassify.data.decode import resize_image
from kclassify.data.order import block_shuffle, epoch_seed
from kclassify.data.spec import check_data
from kclassify.data.splits import stratified_split
from kclassify.errors import DataError
from kclassify.registry import Registry

SOURCES = Registry("data source")


@dataclass
class Split:
    images: np.ndarray  # uint8, (N, H, W, C)
    labels: np.ndarray  # int32, (N,)

    def __len__(self):
        return len(self.labels)

    @property
    def image_shape(self):
        return tuple(self.images.shape[1:])

    def take(self, indices):
        """uint8 array of the examples at `indices` (positions in this split)."""
        return self.images[np.asarray(indices, dtype=np.int64)]

    def subset(self, indices):
        idx = np.asarray(indices, dtype=np.int64)
        return Split(self.images[idx], self.labels[idx])

    def channel_stats(self):
        return channel_stats(self.images)

    def examples(self, seed=0, epoch=0, skip=0, shard_index=0, shard_count=1, training=False):
        """One epoch as an unbatched tf.data.Dataset of (uint8 image, int32 label): for training
        shuffled from (seed, epoch); every `shard_count`-th example from `shard_index`; the first
        `skip` dropped. (The images are already at the training size: random_resized_crop, which
        needs the stored resolution, is refused for in-memory sources by spec.check_data.)"""
        import tensorflow as tf

        ds = tf.data.Dataset.from_tensor_slices((self.images, self.labels))
        if shard_count > 1:
            ds = ds.shard(shard_count, shard_index)
        if training:
            ds = block_shuffle(ds, len(self), epoch_seed(seed, epoch))  # one window: the order may be sorted by class
        return ds.skip(skip)


@dataclass
class Dataset:
    train: object  # Split or StreamSplit
    val: object
    class_names: list
    notes: list = field(default_factory=list)  # e.g. skipped corrupt files

    @property
    def input_shape(self):
        return tuple(self.train.image_shape)

    def channel_stats(self):
        """Per-channel mean and std of the training pixels (0..255), for the model's normalizer
        (a streamed split measures a sample of its stored order, which packing shuffled)."""
        return self.train.channel_stats()


def channel_stats(images, chunk_bytes=2**22):
    """Per-channel mean and std (0..255) of uint8 (N, H, W, C) images, from exact integer sums
    over chunks: a float copy of the whole array would cost 8 bytes a pixel (5.8 GB for 5,000
    images at 224x224)."""
    step = max(1, chunk_bytes // max(int(np.prod(images.shape[1:])), 1))
    n, total, squares = 0, 0, 0
    for i in range(0, len(images), step):
        x = images[i:i + step].reshape(-1, images.shape[-1]).astype(np.int64)
        n, total, squares = n + len(x), total + x.sum(0), squares + (x * x).sum(0)
    mean = total / max(n, 1)
    std = np.sqrt(np.maximum(squares / max(n, 1) - mean * mean, 0.0))
    return mean.tolist(), np.maximum(std, 1e-3).tolist()


def load_data(cfg, seed=0, augment=None):
    """Load the source named in a DataConfig; returns a Dataset with train and val splits.
    `augment` (the recipe's AugmentConfig) matters for random_resized_crop: training images are
    then kept above the training size (streamed) and cropped from their stored resolution."""
    errors = check_data(cfg, augment)
    if errors:
        raise DataError("; ".join(errors))
    data = SOURCES.get(cfg.source)(cfg, seed, augment=augment)
    check_classes(data.class_names, cfg.path or cfg.source)
    if cfg.limit and len(data.train) > cfg.limit:
        keep = np.random.default_rng(seed).permutation(len(data.train))[: cfg.limit]
        data.train = data.train.subset(keep)
    if len(data.val) == 0:
        raise DataError("the validation split is empty: set data.val_fraction, data.val_count or data.val_path")
    return data


def check_classes(class_names, where):
    """A classifier needs two classes at least: one class would train without a word and report
    100% top-1."""
    if len(class_names) < 2:
        found = f"only {class_names[0]!r}" if class_names else "none"
        raise DataError(f"{where}: a classifier needs at least two classes, found {found} "
                        "(one sub-folder per class)")


def resize_all(images, size, resize="crop"):
    """A uint8 batch brought to size x size with the decoder's resize (PIL bilinear, as the kit)."""
    if size is None or images.shape[1:3] == (size, size):
        return images
    return np.stack([resize_image(im, size, resize) for im in images])


@SOURCES.register("digits")
def digits_source(cfg, seed, augment=None):
    """scikit-learn's bundled handwritten digits (1,797 real 8x8 scans): the offline default."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    images = resize_all(images, cfg.image_size, cfg.resize)
    train, val = stratified_split(Split(images, d.target.astype(np.int32)), cfg, seed)
    return Dataset(train, val, [str(i) for i in range(10)])


@SOURCES.register("npz")
def npz_source(cfg, seed, augment=None):
    """Arrays in a .npz: x_train/y_train with x_val/y_val (or x_test/y_test), or x/y to split."""
    path = Path(cfg.path or "")
    if not path.is_file():
        raise DataError(f"npz file not found: {cfg.path!r} (set data.path)")
    try:
        arrays = np.load(path, allow_pickle=False)
        keys = set(arrays.files)
    except Exception as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None

    def prep(x, y):
        x = np.asarray(x)
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4 or x.dtype != np.uint8:
            raise DataError(f"{path}: images must be uint8 (N,H,W[,C]), got {x.dtype} {x.shape}")
        return Split(resize_all(x, cfg.image_size, cfg.resize), np.asarray(y).reshape(-1).astype(np.int32))

    if {"x_train", "y_train"} <= keys:
        train = prep(arrays["x_train"], arrays["y_train"])
        vk = next((k for k in ("val", "test") if {f"x_{k}", f"y_{k}"} <= keys), None)
        val = prep(arrays[f"x_{vk}"], arrays[f"y_{vk}"]) if vk else None
        if val is None:
            train, val = stratified_split(train, cfg, seed)
    elif {"x", "y"} <= keys:
        train, val = stratified_split(prep(arrays["x"], arrays["y"]), cfg, seed)
    else:
        raise DataError(f"{path}: expected arrays x_train/y_train or x/y, found {sorted(keys)}")
    n = int(max(train.labels.max(), val.labels.max())) + 1
    names = [str(c) for c in arrays["class_names"]] if "class_names" in keys else [str(i) for i in range(n)]
    return Dataset(train, val, names)
