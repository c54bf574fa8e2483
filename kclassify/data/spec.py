"""Which data-section fields each source reads, checked before anything is loaded (no TensorFlow,
no numpy): a field a source cannot honour is an error that names it, never silently ignored."""

from kclassify.registry import suggest


# source -> (fields it requires, fields it refuses). The keys are the registered sources
# (a test keeps them equal to kclassify.data.SOURCES).
_TFDS_ONLY = ("name", "data_dir", "manual_dir")
_PACKING = ("max_side", "pack_format")
FIELDS = {
    "digits": ((), ("path", "subdir", "val_path", "val_subdir", *_TFDS_ONLY, *_PACKING, "shuffle_buffer")),
    "npz": (("path",), ("subdir", "val_path", "val_subdir", *_TFDS_ONLY, *_PACKING, "shuffle_buffer")),
    "image_folder": (("path",), _TFDS_ONLY),
    "tfrecord": (("path",), ("subdir", "val_subdir", *_TFDS_ONLY, *_PACKING)),
    "tfds": (("name",), ("path", "subdir", "val_subdir", *_PACKING, "shuffle_buffer")),
}
STORED_RESOLUTION = ("image_folder", "tfrecord")  # sources that keep images above image_size (random_resized_crop)
HINTS = {"image_folder": "a folder of class sub-folders, or a .tar.gz of one",
         "npz": "a .npz file", "tfrecord": "a folder written by `kclassify data pack`",
         "tfds": "a TensorFlow Datasets name such as cifar100"}


def default_crop():
    return {"scale": (0.08, 1.0), "ratio": (3 / 4, 4 / 3)}


def crop_ranges(value):
    """augment.random_resized_crop as {"scale": (lo, hi), "ratio": (lo, hi)}, or None when off."""
    if value is False or value is None:
        return None
    ranges = default_crop()
    if isinstance(value, dict):
        ranges.update({k: tuple(float(x) for x in v) for k, v in value.items()})
    return ranges


def check_data(cfg, augment=None):
    """Error strings (empty when fine) for a DataConfig, and the AugmentConfig fields that depend
    on the data (random_resized_crop needs an image size and sane ranges)."""
    if cfg.source not in FIELDS:
        return [f"unknown data source {cfg.source!r}{suggest(cfg.source, FIELDS)}"]
    required, refused = FIELDS[cfg.source]
    defaults = type(cfg).model_fields
    errors = [f"data.source {cfg.source} needs data.{f}" + (f" ({HINTS[cfg.source]})" if f == required[0] else "")
              for f in required if getattr(cfg, f) in (None, "")]
    errors += [f"data.{f} is set but data.source {cfg.source} does not use it" for f in refused
               if getattr(cfg, f) != defaults[f].default]
    if cfg.val_subdir and not cfg.val_path and "val_subdir" not in refused:
        errors.append("data.val_subdir needs data.val_path (the folder or archive it is inside)")
    if augment is not None:
        errors += _check_crop(crop_ranges(augment.random_resized_crop), cfg)
    return errors


def _check_crop(ranges, cfg):
    if ranges is None:
        return []
    errors = [] if cfg.image_size else ["augment.random_resized_crop needs data.image_size (the size of its crops)"]
    if cfg.source not in STORED_RESOLUTION:  # its images are already at image_size: nothing to crop from
        errors.append(f"augment.random_resized_crop crops from the stored resolution, which data.source "
                      f"{cfg.source} does not keep (use {' or '.join(STORED_RESOLUTION)})")
    (s0, s1), (r0, r1) = ranges["scale"], ranges["ratio"]
    if not 0 < s0 <= s1 <= 1:
        errors.append(f"augment.random_resized_crop.scale must satisfy 0 < lo <= hi <= 1, got {[s0, s1]}")
    if not 0 < r0 <= r1:
        errors.append(f"augment.random_resized_crop.ratio must satisfy 0 < lo <= hi, got {[r0, r1]}")
    return errors
