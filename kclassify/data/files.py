"""Where a folder source's files are: the folder (or an archive extracted once into the cache),
its class sub-folders and their files. Shared by the image-folder source and `kclassify data pack`."""
import hashlib
import os
import tarfile
from pathlib import Path

import numpy as np

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
