"""THE image decoder. Its code lives in the on-device kit (kclassify/kit/kitlib.py: decode_image,
resize_image, load_image), which cannot import kclassify; kclassify loads that file (as it does
for the kit's runner and metrics), so training, evaluation, export calibration and the kit
decode every file with one function and get bit-identical arrays.

Here: the same functions with kclassify's errors, and many files at once in threads (Pillow
releases the GIL while decoding) with a per-path report of the files that are not images.
"""
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from kclassify.errors import DataError
from kclassify.kit import kitlib

_kit = kitlib
RESIZE_POLICIES = _kit.RESIZE_POLICIES
DECODER_VERSION = _kit.DECODER_VERSION
ImageError = _kit.ImageError
decode_image = _kit.decode_image  # path -> uint8 (H, W, 3) at the stored resolution, oriented
resize_image = _kit.resize_image  # uint8 (H, W, C), size, policy -> uint8 at the size


def load_image(path, size=None, resize="crop"):
    """An image file as uint8 (H, W, 3) RGB: EXIF orientation applied, 16-bit scaled, alpha
    composited on white, the first frame of an animation; then brought to `size` (an int, or
    (height, width); None keeps the stored size) by `resize`: "crop" (shorter side, then the
    center), "squash" or "pad" (letterbox). Raises DataError naming the path and the reason."""
    try:
        return _kit.load_image(path, size, resize)
    except _kit.KitError as exc:
        raise DataError(str(exc)) from None


def read_images(paths, size=None, resize="crop"):
    """load_image of many files in threads: (arrays with None for the files that are not images,
    [(path, reason)] of those files)."""
    return read_many(paths, lambda p: _kit.load_image(p, size, resize))


def settings():
    """What decides the decoded pixels (recorded in caches and pack manifests)."""
    return {"decoder": "kitlib.decode_image", "version": DECODER_VERSION, "orientation": "EXIF (all eight)",
            "sixteen_bit": "high byte", "alpha_background": _kit.BACKGROUND, "frames": "first",
            "resample": "PIL bilinear", "pad_value": _kit.PAD_VALUE}


def read_many(paths, fn, workers=None):
    """fn(path) for every path in threads, in order: (results with None for the files that are
    not images, [(path, reason)] of those files)."""

    def one(path):
        try:
            return fn(path), None
        except _kit.ImageError as exc:
            return None, (str(path), exc.reason)

    with ThreadPoolExecutor(max_workers=workers or 2 * (os.cpu_count() or 2)) as pool:
        pairs = list(pool.map(one, paths))
    return [r for r, _ in pairs], [bad for _, bad in pairs if bad]


def skipped_note(skipped, what="file"):
    """One line for Dataset.notes: how many files were skipped, why, and the first paths."""
    if not skipped:
        return None
    reasons = Counter(reason.split(" (")[0] for _, reason in skipped)
    why = ", ".join(f"{n} {r}" for r, n in reasons.most_common())
    first = ", ".join(f"{p} ({r})" for p, r in skipped[:5])
    return f"skipped {len(skipped)} unreadable {what}(s) [{why}]: {first}{' ...' if len(skipped) > 5 else ''}"


def check_strict(skipped, strict):
    """With data.strict, the first file that is not an image is an error."""
    if skipped and strict:
        path, reason = skipped[0]
        raise DataError(f"{len(skipped)} unreadable image file(s), first: {path}: {reason} (data.strict is true)")
