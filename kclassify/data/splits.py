"""Every split of a Dataset, owned in one place: the stratified validation split a source holds
out (data.val_count or data.val_fraction), the training images that calibrate a quantized export,
and those held out for the max-drop search. Selections are stratified picks on the split's labels, then `split.take(idx)`:
only the chosen images are read, so a streamed split works as well as one held in memory.

The default count ("auto") scales with the data: PER_CLASS images a class, at least MINIMUM,
at most MAXIMUM, never more than the training split holds. Measured against the fixed 300 of
earlier versions with benchmarks/int8_budget.py --calibration: on two fine-tuned MobileNets
(10 classes) 50 to 3,000 images gave the same int8 top-1 within one or two validation images, so
the floor stays at 300 and the count grows only where classes would get few images each.
"""
import dataclasses

import numpy as np
from sklearn.model_selection import train_test_split

from kclassify.errors import DataError

PER_CLASS = 32
MINIMUM = 300
MAXIMUM = 1000
SEARCH_FRACTION = 0.15  # of the training split, held out from calibration for the max-drop search
SEARCH_MINIMUM = 200
SEARCH_MAXIMUM = 2000


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


def balanced_pick(labels, count, seed=0, exclude=None):
    """Indices (sorted) of up to `count` images as evenly spread over the classes as they allow:
    round-robin over the classes in a random order within each, so a class smaller than its share
    gives all it has and the bigger classes fill the rest."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    pool = np.setdiff1d(np.arange(len(labels)), np.asarray(exclude if exclude is not None else [], np.int64))
    pool = rng.permutation(pool)
    rank = np.empty(len(pool))
    for c in np.unique(labels[pool]):
        members = labels[pool] == c
        rank[members] = np.arange(members.sum())
    order = np.lexsort((rng.random(len(pool)), rank))  # by rank within the class, random ties
    return np.sort(pool[order[:count]])


def proportional_pick(labels, fraction, minimum=0, maximum=None, seed=0):
    """Indices (sorted) of about `fraction` of every class (at least one image of a class that has
    two or more), `minimum`..`maximum` images in all: a held-out part shaped like the split."""
    labels = np.asarray(labels)
    total = int(np.clip(round(fraction * len(labels)), min(minimum, len(labels) // 2), maximum or len(labels)))
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        share = int(round(total * len(members) / len(labels)))
        picked.append(members[:min(max(share, 1 if len(members) > 1 else 0), len(members) - 1)])
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)


def take(split, idx):
    """The uint8 images at `idx` of a split (in memory or streamed)."""
    idx = np.asarray(idx, np.int64)
    if hasattr(split, "take"):
        return np.asarray(split.take(idx))
    return split.images[idx]


def calibration_images(split, count, seed=0, exclude=None, load=take):
    """Up to `count` unaugmented training images, balanced across classes, not from `exclude`;
    `load(split, idx)` reads them (ExportJob's also resizes to the exported file's input)."""
    images = np.array(load(split, balanced_pick(split.labels, count, seed, exclude)))
    # One black and one white pixel pin the input range to exactly 0..255, so the uint8 input
    # gets scale 1 and zero point 0: raw camera pixels go in unchanged.
    images[0, 0, 0, :] = 0
    images[0, 0, -1, :] = 255
    return images


def search_indices(labels, seed=0):
    """The part of the training split the max-drop search measures on (never calibrates on)."""
    return proportional_pick(labels, SEARCH_FRACTION, SEARCH_MINIMUM, SEARCH_MAXIMUM, seed + 1)


def hold_out_for_max_drop(data, recipe):
    """The Dataset to train on. With output.max_drop_holdout, training leaves out the images the
    max-drop search will measure on (search_indices of the full training split, which the export
    reloads), so the search sees images the model never fitted, as the evaluation split is. Trained
    on, they flip less under int8 than unseen images (clothing MobileNet: the search saw a 0.22-point
    drop where the validation split lost 1.17), but holding them out costs training data: float
    top-1 85.83% -> 82.21% on the clothing recipe (mean of seeds 0-2), hence off by default."""
    if not recipe.output.max_drop_holdout:
        return data
    idx = search_indices(data.train.labels, recipe.runtime.seed)
    keep = np.setdiff1d(np.arange(len(data.train)), idx)
    note = (f"output.max_drop_holdout: {len(idx)} training images kept out of training for the int8 max-drop search "
            f"({len(keep)} train)")
    return dataclasses.replace(data, train=data.train.subset(keep), notes=[*data.notes, note],
                               train_all=data.train)
