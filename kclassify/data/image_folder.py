"""`image_folder`: one sub-folder per class, images of any size and mode (JPEG/PNG/BMP/GIF...).

`data.path` may also be a .tar.gz of such a tree (extracted once into the cache). Every file goes
through the one decoder (decode.py). A folder whose decoded size (at data.image_size) fits in
data.cache_gb is decoded in threads into memory, and cached on disk keyed by the files' names,
sizes and times, so a repeated run does not decode again. A bigger folder, or one trained with
augment.random_resized_crop (which crops from the stored resolution), is packed once into
TFRecord shards in the cache (pack.py, with a progress bar) and streamed (tfrecord.py).
"""
import hashlib
import os

import numpy as np

from kclassify import runtime
from kclassify.data.decode import check_strict, DECODER_VERSION, read_images, skipped_note
from kclassify.data.files import cache_root, list_files, resolve_root
from kclassify.data.pack import MIN_SHARDS, pack_folder
from kclassify.data.sources import check_classes, Dataset, SOURCES, Split
from kclassify.data.splits import stratified_split
from kclassify.data.spec import crop_ranges
from kclassify.data.tfrecord import FORMAT_VERSION, in_memory_if_fits, MANIFEST, Pack, skipped_of, StreamSplit
from kclassify.errors import DataError

SHARD_MB = 128  # shard size of the packs image_folder writes into the cache


# ---------------------------------------------------------------- in memory
def decode_folder(root, size, strict, resize="crop"):
    """Decode every file under root at `size` by `resize`; (images, labels, classes, skipped)
    where skipped lists (path, reason) of the files that are not images (error if strict)."""
    paths, labels, classes = list_files(root)
    cache = _cache_file(paths, size, resize)
    if cache.exists():
        with np.load(cache) as z:
            images, labels = z["images"], z["labels"]
            skipped = [tuple(s.split("\t", 1)) for s in z["skipped"]]
    else:
        images, labels, skipped = _decode_all(root, paths, labels, size, resize)
        _save_cache(cache, images, labels, ["\t".join(s) for s in skipped])
    check_strict(skipped, strict)
    return images, labels, classes, skipped


def _decode_all(root, paths, labels, size, resize):
    arrays, skipped = read_images(paths, size, resize)
    good = [i for i, a in enumerate(arrays) if a is not None]
    if not good:
        raise DataError(f"{root}: none of the {len(paths)} files is a readable image")
    shapes = {arrays[i].shape for i in good}
    if len(shapes) > 1:
        raise DataError(f"{root}: images differ in size ({len(shapes)} sizes, e.g. {sorted(shapes)[:2]}); "
                        "set data.image_size to resize them")
    return np.stack([arrays[i] for i in good]), labels[good], skipped


def _files_key(paths, *settings):
    h = hashlib.sha1("|".join(map(str, (DECODER_VERSION, *settings))).encode())
    for p in paths:
        st = p.stat()
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def _cache_file(paths, size, resize):
    return cache_root() / "decoded" / f"{_files_key(paths, size, resize)}.npz"


def _save_cache(path, images, labels, skipped):
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, images=images, labels=labels, skipped=np.array(skipped, dtype=str))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs decoding time


# ---------------------------------------------------------------- streamed
def decoded_bytes(paths, size):
    """What holding these files decoded at `size` would take (None: the first image's size)."""
    if not paths:
        return 0
    if size:
        return len(paths) * size * size * 3
    from PIL import Image

    for p in paths[:20]:
        try:
            with Image.open(p) as im:
                return len(paths) * im.width * im.height * 3
        except Exception:
            continue
    return 0


def cached_pack(root, cfg):
    """The cache's pack of `root` (written once, then reused while the files are unchanged)."""
    max_side = cfg.max_side or (2 * cfg.image_size if cfg.image_size else None)
    paths, _, _ = list_files(root)
    key = _files_key(paths, max_side, cfg.pack_format, FORMAT_VERSION, MIN_SHARDS, SHARD_MB)
    folder = cache_root() / "packed" / f"{root.name}-{key}"
    if (folder / MANIFEST).is_file():
        pack = Pack(folder)
    else:
        pack = pack_folder(root, folder, max_side=max_side, fmt=cfg.pack_format, shard_mb=SHARD_MB, strict=cfg.strict)
    skipped = [(s["path"], s["reason"]) for s in pack.manifest["source"]["skipped"]]
    check_strict(skipped, cfg.strict)
    return pack


def _streamed(root, cfg, crop=None):
    why = "augment.random_resized_crop crops from the stored images" if crop else \
        f"the decoded images are more than data.cache_gb ({cfg.cache_gb:g} GB) holds in memory"
    runtime.quiet_tensorflow(f"{root}: {why}, so they are packed into TFRecord shards and streamed by tf.data")
    pack = cached_pack(root, cfg)
    return StreamSplit(pack, size=cfg.image_size, resize=cfg.resize, crop=crop, shuffle_buffer=cfg.shuffle_buffer), \
        skipped_of(pack), pack.classes


@SOURCES.register("image_folder")
def image_folder_source(cfg, seed, augment=None):
    """Class sub-folders under data.path; validation from data.val_path or a stratified split."""
    if not cfg.path:
        raise DataError("data.source image_folder needs data.path (a folder of class sub-folders)")
    root = resolve_root(cfg.path, cfg.subdir)
    vroot = resolve_root(cfg.val_path, cfg.val_subdir) if cfg.val_path else None
    paths, _, classes = list_files(root)
    check_classes(classes, root)  # before a single image is read
    vpaths = list_files(vroot)[0] if vroot else []
    crop = crop_ranges(augment.random_resized_crop) if augment is not None else None
    memory = cfg.cache_gb * 1e9
    if crop is None and decoded_bytes(paths, cfg.image_size) + decoded_bytes(vpaths, cfg.image_size) <= memory:
        return _in_memory(root, vroot, cfg, seed)

    train, notes, classes = _streamed(root, cfg, crop)
    if vroot is None:
        train, val = stratified_split(train, cfg, seed)
        return Dataset(train, in_memory_if_fits(val, cfg.cache_gb), classes, notes)
    if decoded_bytes(vpaths, cfg.image_size) <= memory:
        vimages, vlabels, vclasses, vbad = decode_folder(vroot, cfg.image_size, cfg.strict, cfg.resize)
        val, vnotes = Split(vimages, vlabels), [skipped_note(vbad, "validation file")] if vbad else []
    else:
        val, vnotes, vclasses = _streamed(vroot, cfg)
    if vclasses != classes:
        raise DataError(f"validation classes {vclasses} differ from training classes {classes}")
    if tuple(val.image_shape) != tuple(train.image_shape):
        raise DataError("training and validation images differ in size; set data.image_size")
    return Dataset(train, val, classes, notes + [n for n in vnotes if n])


def _in_memory(root, vroot, cfg, seed):
    images, labels, classes, bad = decode_folder(root, cfg.image_size, cfg.strict, cfg.resize)
    notes = [skipped_note(bad)] if bad else []
    if vroot is None:
        train, val = stratified_split(Split(images, labels), cfg, seed)
        return Dataset(train, val, classes, notes)
    vimages, vlabels, vclasses, vbad = decode_folder(vroot, cfg.image_size, cfg.strict, cfg.resize)
    if vclasses != classes:
        raise DataError(f"validation classes {vclasses} differ from training classes {classes}")
    if images.shape[1:] != vimages.shape[1:]:
        raise DataError("training and validation images differ in size; set data.image_size")
    notes += [skipped_note(vbad, "validation file")] if vbad else []
    return Dataset(Split(images, labels), Split(vimages, vlabels), classes, notes)
