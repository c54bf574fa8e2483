"""Data sources. Each returns a `Dataset` of uint8 NHWC arrays: decoded once, held in memory
(CIFAR-10 is 150 MB), so epochs cost no decoding. Nothing here imports TensorFlow except tfds."""
from dataclasses import dataclass, field

import numpy as np

from kclassify.errors import DataError
from kclassify.registry import Registry

SOURCES = Registry("data source")


@dataclass
class Split:
    images: np.ndarray  # uint8, (N, H, W, C)
    labels: np.ndarray  # int32, (N,)

    def __len__(self):
        return len(self.labels)


@dataclass
class Dataset:
    train: Split
    val: Split
    class_names: list
    notes: list = field(default_factory=list)  # e.g. skipped corrupt files

    @property
    def input_shape(self):
        return tuple(self.train.images.shape[1:])

    def channel_stats(self):
        """Per-channel mean and std of the training pixels (0..255), for the model's normalizer."""
        x = self.train.images.reshape(-1, self.train.images.shape[-1]).astype(np.float64)
        return x.mean(0).tolist(), np.maximum(x.std(0), 1e-3).tolist()


def load_data(cfg, seed=0):
    """Load the source named in a DataConfig; returns a Dataset with train and val splits."""
    data = SOURCES.get(cfg.source)(cfg, seed)
    if cfg.limit and len(data.train) > cfg.limit:
        keep = np.random.default_rng(seed).permutation(len(data.train))[: cfg.limit]
        data.train = Split(data.train.images[keep], data.train.labels[keep])
    if len(data.val) == 0:
        raise DataError("the validation split is empty: set data.val_fraction, data.val_count or data.val_path")
    return data


def stratified_split(images, labels, cfg, seed):
    """Hold out a stratified validation split: data.val_count images, else data.val_fraction."""
    from sklearn.model_selection import train_test_split

    size = cfg.val_count or cfg.val_fraction
    if not size:
        return Split(images, labels), Split(images[:0], labels[:0])
    try:
        tr, va = train_test_split(np.arange(len(labels)), test_size=size, stratify=labels, random_state=seed)
    except ValueError as exc:
        raise DataError(f"cannot make a stratified validation split: {exc}") from None
    return Split(images[tr], labels[tr]), Split(images[va], labels[va])


def resize_all(images, size):
    """Resize a uint8 batch to size x size with PIL bilinear (the export kit does the same)."""
    from PIL import Image

    if size is None or images.shape[1:3] == (size, size):
        return images
    squeeze = images.shape[-1] == 1
    out = [np.asarray(Image.fromarray(im[..., 0] if squeeze else im).resize((size, size), Image.BILINEAR))
           for im in images]
    out = np.stack(out)
    return out[..., None] if squeeze else out


@SOURCES.register("digits")
def digits_source(cfg, seed):
    """scikit-learn's bundled handwritten digits (1,797 real 8x8 scans): the offline default."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    images = resize_all(images, cfg.image_size)
    train, val = stratified_split(images, d.target.astype(np.int32), cfg, seed)
    return Dataset(train, val, [str(i) for i in range(10)])


@SOURCES.register("npz")
def npz_source(cfg, seed):
    """Arrays in a .npz: x_train/y_train with x_val/y_val (or x_test/y_test), or x/y to split."""
    from pathlib import Path

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
        return resize_all(x, cfg.image_size), np.asarray(y).reshape(-1).astype(np.int32)

    if {"x_train", "y_train"} <= keys:
        train = Split(*prep(arrays["x_train"], arrays["y_train"]))
        vk = next((k for k in ("val", "test") if {f"x_{k}", f"y_{k}"} <= keys), None)
        val = Split(*prep(arrays[f"x_{vk}"], arrays[f"y_{vk}"])) if vk else None
        if val is None:
            train, val = stratified_split(train.images, train.labels, cfg, seed)
    elif {"x", "y"} <= keys:
        train, val = stratified_split(*prep(arrays["x"], arrays["y"]), cfg, seed)
    else:
        raise DataError(f"{path}: expected arrays x_train/y_train or x/y, found {sorted(keys)}")
    n = int(max(train.labels.max(), val.labels.max())) + 1
    names = [str(c) for c in arrays["class_names"]] if "class_names" in keys else [str(i) for i in range(n)]
    return Dataset(train, val, names)


from kclassify.data import image_folder, tfds_source  # noqa: E402,F401  (registration)
