"""`tfrecord`: a folder written by `kclassify data pack` (pack.py), streamed through tf.data.

A pack holds TFRecord shards of encoded images (decoded once by the one decoder, oriented,
stored at up to max_side, re-encoded JPEG or raw) in a shuffled stored order, with
manifest.json (classes, counts per class and per shard, sha256 per shard, decoder settings) and
labels.npy (every label in stored order). A `StreamSplit` is any subset of a pack's examples;
its epochs read shards in parallel, shuffle, decode and resize (or random-resized-crop) in
tf.data, so memory does not grow with the dataset. TensorFlow is imported only when streaming.
"""
import hashlib
import json
from pathlib import Path

import numpy as np

from kclassify.data.decode import skipped_note
from kclassify.data.order import block_shuffle, epoch_seed
from kclassify.data.sources import channel_stats, Dataset, SOURCES, Split
from kclassify.data.splits import stratified_split
from kclassify.data.spec import crop_ranges
from kclassify.errors import DataError

MANIFEST = "manifest.json"
LABELS = "labels.npy"
FORMAT_VERSION = 1
SHUFFLE_BYTES = 256 * 2**20  # default shuffle buffer: this many bytes of encoded records...
SHUFFLE_MAX = 10_000  # ...but at most this many examples
STATS_SAMPLE = 1024  # examples a streamed split measures for channel_stats
PARSE_BATCH = 256  # records parsed (and filtered) together: half the CPU of one at a time


class Pack:
    """A packed folder: its manifest, labels and shard files (read-only)."""

    def __init__(self, folder):
        self.dir = Path(folder).expanduser()
        manifest = self.dir / MANIFEST
        if not manifest.is_file():
            raise DataError(f"{self.dir}: not a packed data folder (no {MANIFEST}); write one with "
                            "`kclassify data pack FOLDER --out DIR`")
        try:
            self.manifest = json.loads(manifest.read_text())
            self.labels = np.load(self.dir / LABELS).astype(np.int32)
        except (OSError, ValueError) as exc:
            raise DataError(f"{self.dir}: unreadable pack ({exc})") from None
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise DataError(f"{self.dir}: pack format {self.manifest.get('format_version')}, this kclassify "
                            f"reads {FORMAT_VERSION}: pack the folder again")
        self.shards = self.manifest["shards"]
        self.starts = np.concatenate([[0], np.cumsum([s["count"] for s in self.shards])]).astype(np.int64)
        missing = [s["file"] for s in self.shards if not (self.dir / s["file"]).is_file()]
        if missing or self.starts[-1] != len(self.labels):
            raise DataError(f"{self.dir}: incomplete pack ({len(missing)} shard file(s) missing, e.g. "
                            f"{missing[:1]}; {len(self.labels)} labels for {self.starts[-1]} records)")

    @property
    def classes(self):
        return self.manifest["classes"]

    @property
    def shape(self):
        """The stored (H, W, C) when every image has it, else None."""
        return tuple(self.manifest["shape"]) if self.manifest.get("shape") else None

    def files(self, shard_ids):
        return [str(self.dir / self.shards[i]["file"]) for i in shard_ids]

    def shard_of(self, positions):
        return np.searchsorted(self.starts, positions, side="right") - 1

    def verify(self):
        """Names of the shard files whose sha256 differs from the manifest's."""
        return [s["file"] for s in self.shards if sha256(self.dir / s["file"]) != s["sha256"]]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            h.update(block)
    return h.hexdigest()


def crop_or_resize(image, size, policy, crop, seed, position):
    """Random-resized-crop (seeded by the epoch seed and the example's position, so a resumed
    epoch draws the same crops) when `crop` holds its ranges, else the resize policy."""
    # The augment package computes in TensorFlow; importing kclassify.data stays free of it.
    import tensorflow as tf

    from kclassify.augment.geometry import random_resized_crop, resize

    if crop is not None:
        rng = tf.stack([seed, tf.cast(position, tf.int64)])
        return random_resized_crop(image, size, crop["scale"], crop["ratio"], rng)
    return resize(image, size, policy)


def _features():
    import tensorflow as tf

    int64 = tf.io.FixedLenFeature([], tf.int64)
    return {"image": tf.io.FixedLenFeature([], tf.string), "height": int64, "width": int64, "label": int64,
            "position": int64}


def _parse(record):
    import tensorflow as tf

    return tf.io.parse_single_example(record, _features())


def _decoder(fmt):
    import tensorflow as tf

    if fmt == "jpeg":  # ISLOW DCT, as Pillow: the pixels the decoder stored, up to JPEG's own loss
        return lambda r: tf.io.decode_jpeg(r["image"], channels=3, dct_method="INTEGER_ACCURATE")
    return lambda r: tf.reshape(tf.io.decode_raw(r["image"], tf.uint8), tf.stack([r["height"], r["width"], 3]))


def _parse_batch(records, keep=None):
    """A batch of serialized records parsed at once, only those whose position `keep` marks."""
    import tensorflow as tf

    parsed = tf.io.parse_example(records, _features())
    if keep is None:
        return parsed
    wanted = tf.gather(keep, parsed["position"])
    return {k: tf.boolean_mask(v, wanted) for k, v in parsed.items()}


class StreamSplit:
    """Examples of a Pack (in its stored order), brought to `size` x `size` by `resize`, or
    random-resized-cropped from the stored resolution for training when `crop` is set."""

    def __init__(self, pack, positions=None, size=None, resize="crop", crop=None, shuffle_buffer=None):
        self.pack = pack
        everything = positions is None
        self.positions = np.arange(len(pack.labels), dtype=np.int64) if everything else np.unique(
            np.asarray(positions, dtype=np.int64))
        self._everything = everything or len(self.positions) == len(pack.labels)
        if size is None and pack.shape is None:
            raise DataError(f"{pack.dir}: the packed images differ in size; set data.image_size")
        self.size, self.resize, self.crop, self.shuffle_buffer = size, resize, crop, shuffle_buffer
        self.labels = pack.labels[self.positions]

    def __len__(self):
        return len(self.positions)

    @property
    def image_shape(self):
        return (self.size, self.size, 3) if self.size else self.pack.shape

    def subset(self, indices):
        """The examples at `indices` (positions in this split), kept in stored order."""
        return StreamSplit(self.pack, self.positions[np.asarray(indices, dtype=np.int64)], self.size, self.resize,
                           self.crop, self.shuffle_buffer)

    # ------------------------------------------------------------ shards for multi-worker runs
    def _per_shard(self):
        return np.bincount(self.pack.shard_of(self.positions), minlength=len(self.pack.shards))

    def worker_shards(self, shard_index=0, shard_count=1):
        """The shards worker `shard_index` of `shard_count` reads: disjoint, and balanced by this
        split's examples (largest first onto the least-loaded worker)."""
        per = self._per_shard()
        ids = [int(i) for i in np.flatnonzero(per)]
        if not 0 <= shard_index < shard_count:
            raise DataError(f"shard_index {shard_index} is outside 0..{shard_count - 1}")
        if shard_count > len(ids):
            raise DataError(f"{self.pack.dir}: {len(ids)} shard(s) cannot feed {shard_count} workers; "
                            "pack again with a smaller --shard-mb")
        loads, owner = [0] * shard_count, {}
        for i in sorted(ids, key=lambda i: (-per[i], i)):
            w = int(np.argmin(loads))
            owner[i], loads[w] = w, loads[w] + int(per[i])
        return [i for i in ids if owner[i] == shard_index]

    def count(self, shard_index=0, shard_count=1):
        """How many examples worker `shard_index` of `shard_count` sees per epoch."""
        return int(self._per_shard()[self.worker_shards(shard_index, shard_count)].sum())

    def steps_per_epoch(self, batch_size, shard_count=1):
        """Global batches of `batch_size` per epoch that every one of `shard_count` workers can
        fill from its own shards (its batch_size // shard_count slice of each): the least-loaded
        worker decides, so all workers' epochs end at the same step."""
        local = batch_size // shard_count
        return min(self.count(i, shard_count) // local for i in range(shard_count))

    # ------------------------------------------------------------ tf.data
    def _records(self, shard_ids, seed=None, interleave=8, keep=None):
        """Parsed records of these shards, only this split's (or those `keep` marks by position),
        image bytes still encoded: with a `seed`, the shards in a seeded order, `interleave` read
        at once; without, in stored order."""
        import tensorflow as tf

        files = tf.constant(self.pack.files(shard_ids))
        if seed is not None and len(shard_ids) > 1:
            files = tf.gather(files, tf.argsort(tf.random.stateless_uniform([len(shard_ids)], tf.stack([seed, 1]))))
        ds = tf.data.Dataset.from_tensor_slices(files).interleave(
            lambda f: tf.data.TFRecordDataset(f, buffer_size=2**20),
            cycle_length=min(len(shard_ids), interleave) if seed is not None else 1,
            block_length=1, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if keep is None and not self._everything:
            keep = np.zeros(len(self.pack.labels), bool)
            keep[self.positions] = True
        keep = None if keep is None else tf.constant(keep)
        return ds.batch(PARSE_BATCH).map(lambda r: _parse_batch(r, keep), num_parallel_calls=tf.data.AUTOTUNE,
                                         deterministic=True).unbatch()

    def _buffer(self):
        if self.shuffle_buffer:
            return min(self.shuffle_buffer, len(self))
        mean = self.pack.manifest["bytes"] / max(len(self.pack.labels), 1)
        return int(min(len(self), SHUFFLE_MAX, max(256, SHUFFLE_BYTES // max(mean, 1))))

    def examples(self, seed=0, epoch=0, skip=0, shard_index=0, shard_count=1, training=False):
        """One epoch as an unbatched tf.data.Dataset of (uint8 (S, S, 3) image, int32 label).
        training=True: shard order and a shuffle (within windows of data.shuffle_buffer) seeded
        from (seed, epoch) (either may be a tensor), random-resized-crop if `crop` is set, else the resize policy; training=False:
        stored order, the resize policy. `skip` drops the epoch's first examples before they are
        decoded (resuming mid-epoch); shard_count > 1 reads only worker shard_index's shards."""
        import tensorflow as tf

        s = epoch_seed(seed, epoch)
        ds = self._records(self.worker_shards(shard_index, shard_count), s if training else None)
        if training:
            ds = block_shuffle(ds, self._buffer(), s)
        ds = ds.skip(skip)  # may be a tensor too (e.g. only in the first epoch of a flat_map)
        return ds.map(self._decode_fn(training, s), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def eval_batches(self, batch_size):
        """Every example in stored order, resized as for evaluation, in float32 image batches (the
        last may be short), read ahead by tf.data (data.batching.eval_batches)."""
        import tensorflow as tf

        ds = self.examples(training=False).batch(batch_size)
        return ds.map(lambda x, y: tf.cast(x, tf.float32), num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    def _decode_fn(self, training, seed):
        import tensorflow as tf

        decode = _decoder(self.pack.manifest["format"])
        crop = self.crop if training else None
        shape = self.image_shape
        resize = self.size and (crop is not None or self.pack.shape != shape)  # CIFAR at 32: nothing to do

        def fn(record):
            image = decode(record)
            if resize:
                image = crop_or_resize(image, self.size, self.resize, crop, seed, record["position"])
            return tf.ensure_shape(image, shape), tf.cast(record["label"], tf.int32)

        return fn

    def take(self, indices):
        """uint8 array of the examples at `indices` (positions in this split), eval-resized;
        reads only the shards that hold them."""
        import tensorflow as tf

        wanted = self.positions[np.asarray(indices, dtype=np.int64)]
        if not len(wanted):
            return np.zeros((0, *self.image_shape), np.uint8)
        need = np.zeros(len(self.pack.labels), bool)
        need[wanted] = True
        ds = self._records(sorted(set(self.pack.shard_of(wanted).tolist())), keep=need)
        decode = self._decode_fn(False, None)
        ds = ds.map(lambda r: (decode(r)[0], r["position"]), num_parallel_calls=tf.data.AUTOTUNE)
        # Each image goes straight to its rows of one preallocated array: collecting them first and
        # stacking held the split twice (1.5 GB for 5,000 images at 224x224), and the freed half
        # stayed in the process (benchmarks/memory_flat.py).
        rows = {}
        for row, position in enumerate(wanted.tolist()):
            rows.setdefault(position, []).append(row)
        out = np.empty((len(wanted), *self.image_shape), np.uint8)
        for image, position in ds.as_numpy_iterator():
            out[rows[int(position)]] = image
        return out

    def to_memory(self):
        """This split decoded (eval-resized) into an in-memory Split."""
        return Split(self.take(np.arange(len(self))), self.labels.copy())

    def nbytes(self):
        """Decoded size at the training size (what holding it in memory would cost)."""
        return len(self) * int(np.prod(self.image_shape))

    def channel_stats(self):
        """Per-channel mean and std (0..255) of the first STATS_SAMPLE examples in stored order
        (packing shuffled that order, so they are a random sample), eval-resized."""
        return channel_stats(self.take(np.arange(min(len(self), STATS_SAMPLE))))


def in_memory_if_fits(split, cache_gb):
    """A streamed validation split is decoded into memory when it fits in data.cache_gb."""
    if isinstance(split, StreamSplit) and split.nbytes() <= cache_gb * 1e9:
        return split.to_memory()
    return split


def open_pack(path):
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"data path does not exist: {str(path)!r}")
    return Pack(p)


def skipped_of(pack, what="file"):
    src = pack.manifest.get("source", {})
    skipped = [(s["path"], s["reason"]) for s in src.get("skipped", [])]
    note = skipped_note(skipped, what)
    if note and src.get("skipped_count", 0) > len(skipped):
        note = note.replace(f"skipped {len(skipped)}", f"skipped {src['skipped_count']}", 1)
    return [note] if note else []


@SOURCES.register("tfrecord")
def tfrecord_source(cfg, seed, augment=None):
    """Shards from `kclassify data pack` in data.path; validation from data.val_path (another
    pack of the same classes) or a stratified hold-out (kept in memory if it fits cache_gb)."""
    pack = open_pack(cfg.path)
    crop = crop_ranges(augment.random_resized_crop) if augment is not None else None
    train = StreamSplit(pack, size=cfg.image_size, resize=cfg.resize, crop=crop, shuffle_buffer=cfg.shuffle_buffer)
    notes = skipped_of(pack)
    if cfg.val_path:
        vpack = open_pack(cfg.val_path)
        if vpack.classes != pack.classes:
            raise DataError(f"validation classes {vpack.classes} differ from training classes {pack.classes}")
        val = StreamSplit(vpack, size=cfg.image_size, resize=cfg.resize)
        if val.image_shape != train.image_shape:
            raise DataError("training and validation packs differ in image size; set data.image_size")
        notes += skipped_of(vpack, "validation file")
    else:
        train, val = stratified_split(train, cfg, seed)
    return Dataset(train, in_memory_if_fits(val, cfg.cache_gb), pack.classes, notes)
