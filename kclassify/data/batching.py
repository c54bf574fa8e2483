"""How a split is cut into batches, on any backend and without TensorFlow: the steps of an epoch,
the evaluation batch size, and the evaluation batches themselves (every image in order,
unaugmented). The training streams that use these are pipeline.py (tf.data) and numpy_stream.py."""


def is_streamed(split):
    return not hasattr(split, "images")


def steps_per_epoch(split, batch_size, cap=None, workers=1):
    """Global batches per epoch. A streamed split over several workers ends its epoch when the
    least-loaded worker's shards run out (each fills its own slice of every batch from its own
    shards), so every worker agrees on the epoch length; in memory every worker indexes all images."""
    if is_streamed(split) and workers > 1:
        steps = max(split.steps_per_epoch(batch_size, workers), 1)
    else:
        steps = max(len(split) // batch_size, 1)
    return min(steps, cap) if cap else steps


EVAL_PIXELS = 256 * 64 * 64  # pixels in one evaluation forward pass when the recipe does not set a batch


def eval_batch_size(image_shape, views=1, requested=None):
    """The evaluation batch: `requested`, else as many images (times their test-time views) as
    make EVAL_PIXELS, a power of two from 4 to 256: 256 up to 64x64, 16 at 224x224 (256 at 224
    held 7.0 GB at its peak against 3.0 GB at 16, benchmarks/data_stream.py), 4 at 224 with 10 views."""
    if requested:
        return int(requested)
    fit = EVAL_PIXELS // max(int(image_shape[0]) * int(image_shape[1]) * max(int(views), 1), 1)
    return int(min(256, max(4, 2 ** max(fit.bit_length() - 1, 0))))


def eval_batches(split, batch_size=None, views=1):
    """The split's images in order, unaugmented, in batches (the last may be short), to iterate as
    often as needed; batch_size None: the eval_batch_size of its images and `views`. An in-memory
    split gives uint8 numpy views of its array (nothing is copied: a tf.data copy of 5,000 images at
    224x224 held 0.75 GB, benchmarks/memory_flat.py); a streamed one, its own float batches (tf.data)."""
    size = eval_batch_size(split.image_shape, views, batch_size)
    if is_streamed(split):
        return split.eval_batches(size)
    return [split.images[start:start + size] for start in range(0, len(split), size)]
