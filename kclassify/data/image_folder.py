"""`image_folder`: one sub-folder per class, images of any size and mode (JPEG/PNG/BMP/GIF...).

`data.path` may also be a .tar.gz of such a tree (extracted once into the cache). Decoding runs
in a thread pool (Pillow releases the GIL) and the decoded arrays are cached on disk, keyed by
the files' names, sizes and times, so a resumed or repeated run does not decode again.
"""
import hashlib
import os
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from kclassify.data.sources import SOURCES, Dataset, Split, stratified_split
from kclassify.errors import DataError


def cache_root():
    return Path(os.environ.get("KCLASSIFY_CACHE", Path.home() / ".cache" / "kclassify"))


def resolve_root(path, subdir=None):
    """A directory to read classes from: `path` itself, or its extracted archive; then `subdir`."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"data path does not exist: {str(path)!r}")
    if p.is_file() and tarfile.is_tarfile(p):
        p = extract_once(p)
    elif p.is_file():
        raise DataError(f"{p}: expected a folder of class sub-folders or a .tar.gz of one")
    if subdir:
        p = p / subdir
        if not p.is_dir():
            raise DataError(f"data.subdir {subdir!r} not found in {p.parent}")
    return p


def extract_once(archive):
    st = archive.stat()
    key = hashlib.sha1(f"{archive.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    dest = cache_root() / "extracted" / f"{archive.name.split('.')[0]}-{key}"
    if not (dest / ".done").exists():
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")
        (dest / ".done").touch()
    return dest


def list_files(root):
    """(paths, labels, class_names) of every visible file under each class folder."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class sub-folders (expected {root}/<class>/<image files>)")
    paths, labels = [], []
    for idx, name in enumerate(classes):
        files = sorted(f for f in (root / name).rglob("*") if f.is_file() and not f.name.startswith("."))
        if not files:
            raise DataError(f"class folder {root / name} is empty")
        paths += files
        labels += [idx] * len(files)
    return paths, np.array(labels, dtype=np.int32), classes


def decode(path, size):
    """uint8 HxWx3 array, or None when the file is not a readable image."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size and im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except Exception:
        return None


def decode_folder(root, size, strict):
    """Decode every image under root; corrupt files are skipped and reported (error if strict)."""
    paths, labels, classes = list_files(root)
    cache = _cache_file(paths, size)
    if cache.exists():
        with np.load(cache) as z:
            images, labels, bad = z["images"], z["labels"], [str(s) for s in z["skipped"]]
    else:
        images, labels, bad = _decode_all(root, paths, labels, size)
        _save_cache(cache, images, labels, bad)
    if bad and strict:
        raise DataError(f"{len(bad)} unreadable image file(s), first: {bad[0]} (data.strict is true)")
    return images, labels, classes, bad


def _decode_all(root, paths, labels, size):
    with ThreadPoolExecutor(max_workers=2 * (os.cpu_count() or 2)) as pool:
        arrays = list(pool.map(lambda p: decode(p, size), paths, chunksize=64))
    bad = [str(p) for p, a in zip(paths, arrays) if a is None]
    good = [i for i, a in enumerate(arrays) if a is not None]
    if not good:
        raise DataError(f"{root}: none of the {len(paths)} files is a readable image")
    shapes = {arrays[i].shape for i in good}
    if len(shapes) > 1:
        raise DataError(f"{root}: images differ in size ({len(shapes)} sizes, e.g. {sorted(shapes)[:2]}); "
                        "set data.image_size to resize them")
    return np.stack([arrays[i] for i in good]), labels[good], bad


def _cache_file(paths, size):
    h = hashlib.sha1(str(size).encode())
    for p in paths:
        st = p.stat()
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode())
    return cache_root() / "decoded" / f"{h.hexdigest()[:20]}.npz"


def _save_cache(path, images, labels, skipped):
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, images=images, labels=labels, skipped=np.array(skipped, dtype=str))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs decoding time


@SOURCES.register("image_folder")
def image_folder_source(cfg, seed):
    """Class sub-folders under data.path; validation from data.val_path or a stratified split."""
    if not cfg.path:
        raise DataError("data.source image_folder needs data.path (a folder of class sub-folders)")
    images, labels, classes, bad = decode_folder(resolve_root(cfg.path, cfg.subdir), cfg.image_size, cfg.strict)
    notes = [f"skipped {len(bad)} unreadable file(s): {', '.join(bad[:5])}"] if bad else []
    if cfg.val_path:
        vimages, vlabels, vclasses, vbad = decode_folder(resolve_root(cfg.val_path, cfg.val_subdir), cfg.image_size, cfg.strict)
        if vclasses != classes:
            raise DataError(f"validation classes {vclasses} differ from training classes {classes}")
        if images.shape[1:] != vimages.shape[1:]:
            raise DataError("training and validation images differ in size; set data.image_size")
        notes += [f"skipped {len(vbad)} unreadable validation file(s)"] if vbad else []
        return Dataset(Split(images, labels), Split(vimages, vlabels), classes, notes)
    train, val = stratified_split(images, labels, cfg, seed)
    return Dataset(train, val, classes, notes)
