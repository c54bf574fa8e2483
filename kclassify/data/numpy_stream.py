"""The in-memory training stream in numpy, for a compiled step that prepares its own batches
(runtime.augment_on device on JAX): per global step, the uint8 images, int32 labels and the
alternating-flip mask of pipeline.memory_batches, in the same stateless, step-indexed order
(data/shuffle.py computes TensorFlow's index_shuffle bit for bit), followed by the step's index,
from which the step draws its random numbers. No TensorFlow is involved."""
import numpy as np

from kclassify.data.shuffle import index_shuffle
from kclassify.errors import RecipeError


def numpy_batches(split, batch, steps_per_epoch, seed, start_step=0, worker=(0, 1)):
    """Endless (images, labels, flip mask, step) from global step `start_step`: this worker's slice
    of each global batch, as pipeline.BatchPlan (balance "none") and memory_batches give it."""
    if not hasattr(split, "images"):
        raise RecipeError("runtime.augment_on device on JAX reads in-memory data; a streamed split (data.stream, "
                          "tfrecord packs) goes through tf.data: use runtime.augment_on host")
    index, workers = worker
    local = batch // workers
    labels = np.asarray(split.labels, np.int32)
    last = len(split) - 1
    step = int(start_step)
    while True:
        epoch, within = divmod(step, steps_per_epoch)
        positions = within * batch + np.arange(index * local, (index + 1) * local, dtype=np.int64)
        idx = index_shuffle(positions, (seed, epoch), last)
        coin = index_shuffle(idx, (seed, -1), last) % 2
        yield split.images[idx], labels[idx], coin != epoch % 2, np.int64(step)
        step += 1
