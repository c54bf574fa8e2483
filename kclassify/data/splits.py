"""Every split of a Dataset, owned in one place: the stratified validation split a source holds
out (data.val_count or data.val_fraction) and the training images that calibrate a quantized
export. Calibration picks are stratified on the split's labels, then `split.take(idx)`:
only the chosen images are read, so a streamed split works as well as one held in memory.

The default count ("auto") scales with the data: PER_CLASS images a class, at least MINIMUM,
at most MAXIMUM, never more than the training split holds. Measured against the fixed 300 of
earlier versions with benchmarks/int8_budget.py --calibration: on two fine-tuned MobileNets
(10 classes) 50 to 3,000 images gave the same int8 top-1 within one or two validation images, so
the floor stays at 300 and the count grows only where classes would get few images each.
"""
import numpy as np
from sklearn.model_selection import train_test_split

from kclassify.errors import DataError

PER_CLASS = 32
MINIMUM = 300
MAXIMUM = 1000


def stratified_split(split, cfg, seed):
    """Hold out a stratified validation split of a Split or StreamSplit: data.val_count
    examples, else data.val_fraction of them."""
    size = cfg.val_count or cfg.val_fraction
    everything = np.arange(len(split))
    if not size:
        return split, split.subset(everything[:0])
    try:
        tr, va = train_test_split(everything, test_size=size, stratify=split.labels, random_state=seed)
    except ValueError as exc:
        raise DataError(f"cannot make a stratified validation split: {exc}") from None
    return split.subset(tr), split.subset(va)  # a StreamSplit keeps its stored order


def auto_count(num_classes, available):
    """The calibration size for `num_classes` classes when `available` images can be used."""
    return int(min(max(PER_CLASS * num_classes, MINIMUM), MAXIMUM, available))


def resolve_count(setting, num_classes, available):
    """An int from the recipe/CLI setting: a number (capped at what is there) or "auto"."""
    if setting in (None, "auto"):
        return auto_count(num_classes, available)
    return int(min(setting, available))


def balanced_pick(labels, count, seed=0):
    """Indices (sorted) of up to `count` images as evenly spread over the classes as they allow:
    round-robin over the classes in a random order within each, so a class smaller than its share
    gives all it has and the bigger classes fill the rest."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    pool = rng.permutation(len(labels))
    rank = np.empty(len(pool))
    for c in np.unique(labels[pool]):
        members = labels[pool] == c
        rank[members] = np.arange(members.sum())
    order = np.lexsort((rng.random(len(pool)), rank))  # by rank within the class, random ties
    return np.sort(pool[order[:count]])


def take(split, idx):
    """The uint8 images at `idx` of a split (in memory or streamed)."""
    idx = np.asarray(idx, np.int64)
    if hasattr(split, "take"):
        return np.asarray(split.take(idx))
    return split.images[idx]


def calibration_images(split, count, seed=0, load=take):
    """Up to `count` unaugmented training images, balanced across classes;
    `load(split, idx)` reads them (ExportJob's also resizes to the exported file's input)."""
    images = np.array(load(split, balanced_pick(split.labels, count, seed)))
    # One black and one white pixel pin the input range to exactly 0..255, so the uint8 input
    # gets scale 1 and zero point 0: raw camera pixels go in unchanged.
    images[0, 0, 0, :] = 0
    images[0, 0, -1, :] = 255
    return images
