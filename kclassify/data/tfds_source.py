"""`tfds`: any TensorFlow Datasets name (cifar10, cifar100, ...).

Offline, tfds retries downloads for minutes before failing. We check reachability first (a few
seconds) and say how to build the dataset from a local archive with data.manual_dir instead.
"""
import os
import socket

import numpy as np

from kclassify.data.sources import SOURCES, Dataset, Split, resize_all, stratified_split
from kclassify.errors import DataError

PROBE = ("storage.googleapis.com", 443)  # tfds' own mirror, tried first by its downloader


def online(timeout=3.0):
    if os.environ.get("KCLASSIFY_OFFLINE") == "1":
        return False
    try:
        socket.create_connection(PROBE, timeout=timeout).close()
        return True
    except OSError:
        return False


def _builder(cfg):
    import tensorflow_datasets as tfds

    if not cfg.name:
        raise DataError("data.source tfds needs data.name (e.g. cifar100)")
    try:
        return tfds.builder(cfg.name, data_dir=cfg.data_dir)
    except Exception as exc:  # DatasetNotFoundError lists hundreds of names: keep the first line
        raise DataError(f"tfds: {str(exc).splitlines()[0]}") from None


def _prepare(builder, cfg):
    import tensorflow_datasets as tfds

    if cfg.manual_dir:
        config = tfds.download.DownloadConfig(manual_dir=cfg.manual_dir)
    elif online():
        config = None
    else:
        raise DataError(
            f"tfds dataset {cfg.name!r} is not prepared in {builder.data_dir} and there is no network.\n"
            f"  Put its archive (for cifar100: cifar-100-binary.tar.gz) in a folder and set\n"
            f"  data.manual_dir=/that/folder (and data.data_dir for where to build it), or use\n"
            f"  data.source=image_folder / npz with local files.")
    try:
        builder.download_and_prepare(download_config=config)
    except Exception as exc:
        raise DataError(f"tfds could not prepare {cfg.name!r}: {str(exc).splitlines()[0]}") from None


def _split_arrays(builder, split, size, resize):
    import tensorflow_datasets as tfds

    ds = builder.as_dataset(split=split, as_supervised=True)
    pairs = list(tfds.as_numpy(ds))
    images = np.stack([p[0] for p in pairs]).astype(np.uint8)
    if images.ndim == 3:
        images = images[..., None]
    labels = np.array([p[1] for p in pairs], dtype=np.int32)
    return Split(resize_all(images, size, resize), labels)


@SOURCES.register("tfds")
def tfds_source(cfg, seed, augment=None):
    """Train from the 'train' split; validate on data.val_path (a split name such as 'test'),
    else on a stratified hold-out of 'train'."""
    builder = _builder(cfg)
    try:
        train = _split_arrays(builder, "train", cfg.image_size, cfg.resize)
    except AssertionError:  # "could not find data": not prepared yet
        _prepare(builder, cfg)
        train = _split_arrays(builder, "train", cfg.image_size, cfg.resize)
    if cfg.val_path:
        val = _split_arrays(builder, cfg.val_path, cfg.image_size, cfg.resize)
    else:
        train, val = stratified_split(train, cfg, seed)
    label = builder.info.features["label"]
    return Dataset(train, val, list(label.names))
