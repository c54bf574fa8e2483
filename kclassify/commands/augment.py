"""`kclassify augment preview`: a grid of training images as the recipe's own training pipeline
delivers them (crops, flips, ops, MixUp/CutMix, smoothed labels): tf.data's, or on JAX with
runtime.augment_on device the compiled step's preparation of the numpy stream. The run report embeds the same
grid. The runtime is the caller's to set up (the CLI and API do it once per command; the report
runs inside a finished training command and must not set it up again)."""
import numpy as np

from kclassify.augment.preview import write_grid
from kclassify.data import load_data
from kclassify.train.backends import prepared_batches


def write_preview(recipe, out, count=32, data=None, echo=print):
    """Write the grid of `count` augmented training images to `out` (a path or a file object);
    `data` (the recipe's loaded data) skips loading it again."""
    data = data or load_data(recipe.data, recipe.runtime.seed, augment=recipe.augment)
    recipe = recipe.model_copy(deep=True)
    recipe.train.batch_size = min(count, len(data.train))
    images, targets = next(iter(prepared_batches(recipe, data.train, len(data.class_names), mix=True)))[:2]
    write_grid(np.clip(np.asarray(images), 0, 255).astype(np.uint8), np.asarray(targets), data.class_names, out)
    echo(f"wrote {out}: {len(images)} augmented training images of recipe {recipe.name}")
