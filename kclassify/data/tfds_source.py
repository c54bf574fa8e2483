"""`tfds`: any TensorFlow Datasets name (cifar10, cifar100, ...).

Offline, tfds retries downloads for minutes before failing. We check reachability first (a few
seconds) and say how to build the dataset from a local archive with data.manual_dir instead.

The records' image bytes go through the one decoder (decode.py), not tfds' own (which, like
tf.io.decode_image, ignores EXIF orientation), and are held in memory at data.image_size: a split
that would decode to more than data.cache_gb is refused before anything is decoded.
"""
import os
import socket

import numpy as np

from kclassify.data.decode import _kit, check_strict, read_many, skipped_note
from kclassify.data.sources import Dataset, SOURCES, Split
from kclassify.data.splits import stratified_split
from kclassify.errors import DataError

PROBE = ("storage.googleapis.com", 443)  # tfds' own mirror, tried first by its downloader
CHUNK = 512  # records decoded (in threads) at a time


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


def _image_feature(builder, cfg):
    """(image key, label key, channels) of the dataset's supervised pair."""
    import tensorflow_datasets as tfds

    keys = builder.info.supervised_keys
    if not keys or len(keys) != 2 or not all(isinstance(k, str) for k in keys):
        raise DataError(f"tfds dataset {cfg.name!r} has no (image, label) supervised keys")
    feature = builder.info.features[keys[0]]
    if not isinstance(feature, tfds.features.Image):
        raise DataError(f"tfds dataset {cfg.name!r}: feature {keys[0]!r} is not an image")
    return keys[0], keys[1], (feature.shape[-1] or 3), feature.shape


class _Record:
    """One record's encoded image, named for the decoder's error messages."""

    def __init__(self, name, data):
        self.name, self.data = name, data

    def __str__(self):
        return self.name


def _check_fits(builder, split, cfg, shape, channels):
    if cfg.image_size:
        pixels = cfg.image_size * cfg.image_size
    elif None not in shape[:2]:
        pixels = shape[0] * shape[1]
    else:
        return
    try:
        need = builder.info.splits[split].num_examples * pixels * channels
    except KeyError:  # not prepared yet: its size is unknown
        return
    if need > cfg.cache_gb * 1e9:
        raise DataError(f"tfds {cfg.name}[{split}] decodes to {need / 1e9:.1f} GB, more than data.cache_gb "
                        f"({cfg.cache_gb:g}); the tfds source holds its splits in memory: raise data.cache_gb, "
                        "or write the images to class folders and stream them (`kclassify data pack`)")


def _split_arrays(builder, split, cfg):
    """A tfds split through the one decoder at data.image_size: (Split, [(record, reason)] skipped)."""
    import tensorflow_datasets as tfds

    image_key, label_key, channels, shape = _image_feature(builder, cfg)
    _check_fits(builder, split, cfg, shape, channels)
    ds = builder.as_dataset(split=split, decoders={image_key: tfds.decode.SkipDecoding()})
    images, labels, skipped, chunk = [], [], [], []

    def flush():
        arrays, bad = read_many([r for r, _ in chunk], lambda r: _kit.load_image(
            r.name, cfg.image_size, cfg.resize, channels, data=r.data))
        images.extend(a for a in arrays if a is not None)
        labels.extend(y for a, (_, y) in zip(arrays, chunk) if a is not None)
        skipped.extend(bad)
        chunk.clear()

    for i, example in enumerate(tfds.as_numpy(ds)):
        chunk.append((_Record(f"tfds:{builder.name}/{split}[{i}]", example[image_key]), int(example[label_key])))
        if len(chunk) == CHUNK:
            flush()
    flush()
    if not images:
        raise DataError(f"tfds {cfg.name}[{split}]: no readable images")
    if len({a.shape for a in images}) > 1:
        raise DataError(f"tfds {cfg.name}[{split}]: images differ in size; set data.image_size to resize them")
    return Split(np.stack(images), np.asarray(labels, dtype=np.int32)), skipped


def _load(builder, split, cfg, what):
    data, skipped = _split_arrays(builder, split, cfg)
    check_strict(skipped, cfg.strict)
    return data, [skipped_note(skipped, what)] if skipped else []


@SOURCES.register("tfds")
def tfds_source(cfg, seed, augment=None):
    """Train from the 'train' split; validate on data.val_path (a split name such as 'test'),
    else on a stratified hold-out of 'train'."""
    builder = _builder(cfg)
    try:
        train, notes = _load(builder, "train", cfg, "record")
    except AssertionError:  # "could not find data": not prepared yet
        _prepare(builder, cfg)
        train, notes = _load(builder, "train", cfg, "record")
    if cfg.val_path:
        val, vnotes = _load(builder, cfg.val_path, cfg, "validation record")
        notes += vnotes
    else:
        train, val = stratified_split(train, cfg, seed)
    label = builder.info.features[_image_feature(builder, cfg)[1]]
    return Dataset(train, val, list(label.names), notes)
