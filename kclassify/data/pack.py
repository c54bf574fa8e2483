"""`kclassify data pack FOLDER --out DIR`: an image folder as TFRecord shards for streaming.

Every file is decoded once by the one decoder (oriented, 16-bit scaled, alpha composited),
shrunk to at most max_side on its longer side (never enlarged: random-resized-crop wants the
stored resolution), and stored as JPEG (quality 95, no chroma subsampling) or raw pixels. The
stored order is a seeded permutation of the files, so every shard mixes the classes and a modest
shuffle buffer suffices. Files that are not images are skipped and listed in the manifest
(data.strict / --strict: the first one is an error). Memory stays flat: images are decoded,
encoded and written in small chunks.
"""
import io
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from kclassify import runtime
from kclassify.data.decode import check_strict, decode_image, read_many, resize_image, settings
from kclassify.data.files import list_files, resolve_root
from kclassify.data.tfrecord import FORMAT_VERSION, LABELS, MANIFEST, Pack, sha256
from kclassify.errors import DataError

JPEG_QUALITY = 95
CHUNK = 256  # files decoded and encoded (in threads) between writes
# Shards are what a multi-worker run divides between its workers (whole shards each), so a shard
# holds at most ceil(n / MIN_SHARDS) of a pack's n images (shard_mb may cut it smaller): the
# workers' loads differ by at most one shard (about 1/64 of the data), and even a small pack has
# more than 32 shards (n of them below 64 images).
MIN_SHARDS = 64


def fit_within(array, max_side):
    """The image shrunk (PIL bilinear) so its longer side is at most max_side; aspect kept."""
    h, w = array.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return array
    scale = max_side / max(h, w)
    return resize_image(array, (max(int(h * scale + 0.5), 1), max(int(w * scale + 0.5), 1)), "squash")


def encode(path, max_side, fmt):
    """(stored bytes, (h, w)) of one file through the decoder."""
    from PIL import Image

    array = fit_within(decode_image(path), max_side)
    if fmt == "raw":
        return array.tobytes(), array.shape[:2]
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    return buf.getvalue(), array.shape[:2]


def _example(data, shape, label, position, relpath):
    import tensorflow as tf

    ints = lambda v: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))
    feats = {"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[data])), "height": ints(shape[0]),
             "width": ints(shape[1]), "label": ints(label), "position": ints(position),
             "path": tf.train.Feature(bytes_list=tf.train.BytesList(value=[relpath.encode()]))}
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


class _ShardWriter:
    """Writes records into shard-NNNNN.tfrecord files of about `limit` bytes and at most
    `max_count` records each."""

    def __init__(self, folder, limit, num_classes, max_count):
        self.folder, self.limit, self.k, self.max_count = folder, limit, num_classes, max_count
        self.shards, self.writer = [], None

    def write(self, record, label):
        import tensorflow as tf

        if self.writer is None:
            name = f"shard-{len(self.shards):05d}.tfrecord"
            self.writer = tf.io.TFRecordWriter(str(self.folder / name))
            self.shards.append({"file": name, "count": 0, "counts_per_class": [0] * self.k, "bytes": 0})
        self.writer.write(record)
        shard = self.shards[-1]
        shard["count"] += 1
        shard["counts_per_class"][label] += 1
        shard["bytes"] += len(record)
        if shard["bytes"] >= self.limit or shard["count"] >= self.max_count:
            self.close()

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None
            self.shards[-1]["sha256"] = sha256(self.folder / self.shards[-1]["file"])


def pack_folder(folder, out, subdir=None, max_side=None, fmt="jpeg", shard_mb=128, strict=False, seed=0,
                progress=True):
    """Pack `folder` (class sub-folders, or a .tar.gz of them; `subdir` inside it) into `out`;
    returns the Pack. The pack is built beside `out` and renamed into place when complete, so an
    interrupted run leaves no half pack, and of two processes packing into one `out` (the cache)
    the second finds the first's pack and drops its own."""
    if fmt not in ("jpeg", "raw"):
        raise DataError(f"unknown pack format {fmt!r}: use jpeg or raw")
    root = resolve_root(folder, subdir)
    paths, labels, classes = list_files(root)
    out = Path(out).expanduser()
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out} exists and is not empty: choose another --out or remove it")
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        manifest = _write(root, paths, labels, classes, tmp, max_side, fmt, shard_mb, strict, seed, progress)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        try:
            os.replace(tmp, out)
        except OSError:
            if not (out / MANIFEST).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Pack(out)


def _write(root, paths, labels, classes, tmp, max_side, fmt, shard_mb, strict, seed, progress):
    runtime.quiet_tensorflow()  # TFRecordWriter; imported only now, so bad arguments fail fast
    order = np.random.default_rng(seed).permutation(len(paths))
    writer = _ShardWriter(tmp, int(shard_mb * 2**20), len(classes), -(-len(paths) // MIN_SHARDS))
    stored_labels, skipped, shapes, position = [], [], set(), 0
    bar = _progress(len(paths), f"packing {root}", progress)
    try:
        for start in range(0, len(order), CHUNK):
            chunk = [paths[i] for i in order[start:start + CHUNK]]
            encoded, bad = read_many(chunk, lambda p: encode(p, max_side, fmt))
            check_strict(bad, strict)
            skipped += bad
            for i, item in zip(order[start:start + CHUNK], encoded):
                if item is None:
                    continue
                data, shape = item
                writer.write(_example(data, shape, labels[i], position, str(paths[i].relative_to(root))), int(labels[i]))
                stored_labels.append(int(labels[i]))
                shapes.add(tuple(shape))
                position += 1
            bar.update(len(chunk))
    finally:
        writer.close()
        bar.finish()
    if not stored_labels:
        raise DataError(f"{root}: none of the {len(paths)} files is a readable image")
    np.save(tmp / LABELS, np.asarray(stored_labels, np.int32))
    counts = np.bincount(stored_labels, minlength=len(classes)).tolist()
    return {
        "format_version": FORMAT_VERSION, "classes": classes, "count": position, "counts_per_class": counts,
        "format": fmt, "jpeg_quality": JPEG_QUALITY if fmt == "jpeg" else None, "max_side": max_side,
        "shape": [*next(iter(shapes)), 3] if len(shapes) == 1 else None,
        "bytes": int(sum(s["bytes"] for s in writer.shards)), "shards": writer.shards,
        "labels": {"file": LABELS, "sha256": sha256(tmp / LABELS)},
        "order": f"numpy default_rng({seed}).permutation of the sorted file list", "decoder": settings(),
        "source": {"folder": str(root), "files": len(paths), "skipped_count": len(skipped),
                   "skipped": [{"path": p, "reason": r} for p, r in skipped[:1000]]},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


class _progress:
    """A progress bar on stderr (click's), or nothing."""

    def __init__(self, total, label, show):
        self.bar = None
        if show:
            import click

            self.bar = click.progressbar(length=total, label=label, file=sys.stderr, show_pos=True, show_eta=True)
            self.bar.__enter__()

    def update(self, n):
        if self.bar is not None:
            self.bar.update(n)

    def finish(self):
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


def describe(pack):
    """One line about a pack, for the CLI."""
    m = pack.manifest
    skipped = m["source"]["skipped_count"]
    return (f"packed {m['count']:,} images of {len(m['classes'])} classes into {len(m['shards'])} shard(s), "
            f"{m['bytes'] / 2**20:.1f} MB ({m['format']}, max side {m['max_side'] or 'as stored'})"
            f"{f', skipped {skipped} unreadable file(s)' if skipped else ''}: {pack.dir}")
