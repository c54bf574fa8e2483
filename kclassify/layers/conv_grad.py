"""A convolution's filter gradient as k*k matrix products, where that is faster than the kernel's own.

On Intel CPUs with AMX (Sapphire Rapids and later), oneDNN's bfloat16 backward-weights kernel
(brgconv_bwd_w) runs 2-6x slower than the forward pass of the same convolution when the feature
map is small and the channels many: measured on a 2-core Xeon (amx_bf16), batch 512, 3x3 convs,
384->384 channels at 7x7: forward 99-114 ms, filter gradient 229-483 ms; at 3x3: 31-47 against
201-211 ms. For a stride-1 'same' convolution the filter gradient is, per kernel tap (i, j), one
matrix product: the input shifted by the tap, flattened to (pixels, in_channels), transposed,
times the output gradient flattened to (pixels, out_channels). Those k*k products run on the
matrix units at their rate: 79 ms at 7x7 and 17 at 3x3 above. Where the map is large and the
channels few (31x31, 24->128) the kernel wins. Other CPUs were not measured, so `auto` times both
at the run's batch and shapes in a bfloat16 run on a CPU and routes a layer only where the
products win; on a GPU it keeps cuDNN's kernels.

`filter_gradients(model, batch, mode)` routes the chosen layers while the run trains: the layer's
forward and input gradient are TensorFlow's own ops, only the filter gradient changes, and the
layer stays Keras' Conv2D (saved files and exports never see the route; the final evaluation runs
after it ends).
"""
import contextlib
import functools

from kclassify.runtime import timed

_MARGIN = 0.9  # route only when the products take under 90% of the kernel's time


def eligible(layer):
    """A stride-1, undilated, ungrouped, 'same' Conv2D with an odd square kernel that trains."""
    import keras

    if type(layer) is not keras.layers.Conv2D:
        return False
    k = layer.kernel_size
    return (layer.trainable and layer.built and k[0] == k[1] and k[0] % 2 == 1
            and tuple(layer.strides) == (1, 1) and tuple(layer.dilation_rate) == (1, 1) and layer.groups == 1
            and layer.padding == "same" and layer.data_format == "channels_last")


def filter_grad_by_matmul(x, dy, k):
    """The filter gradient of a stride-1 'same' k x k convolution (NHWC): one product per tap."""
    import tensorflow as tf

    p = k // 2
    h, w = tf.shape(x)[1], tf.shape(x)[2]
    ci, co = x.shape[-1], dy.shape[-1]
    xp = tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]])
    flat_dy = tf.reshape(dy, [-1, co])
    taps = [tf.matmul(tf.reshape(xp[:, i:i + h, j:j + w, :], [-1, ci]), flat_dy, transpose_a=True)
            for i in range(k) for j in range(k)]
    return tf.reshape(tf.stack(taps), [k, k, ci, co])


def routed_conv(x, kernel):
    """conv2d(x, kernel, stride 1, 'same') whose filter gradient comes from filter_grad_by_matmul."""
    import tensorflow as tf

    k = kernel.shape[0]

    @tf.custom_gradient
    def conv(x, kernel):
        def grad(dy):
            dx = tf.nn.conv2d_transpose(dy, kernel, tf.shape(x), 1, "SAME")
            return dx, filter_grad_by_matmul(x, dy, k)

        return tf.nn.conv2d(x, kernel, 1, "SAME"), grad

    return conv(x, tf.convert_to_tensor(kernel))


def choose(model, batch, mode):
    """[(layer, native ms, matmul ms)] for the layers to route: all eligible ones for `matmul`,
    none for `native`, and for `auto` those computing in bfloat16 whose filter gradient the
    products compute faster at this batch (none on a GPU, where cuDNN's kernels win)."""
    import tensorflow as tf

    layers = [layer for layer in model._flatten_layers(include_self=False) if eligible(layer)]
    if mode == "native" or not layers:
        return []
    if mode == "matmul":
        return [(layer, None, None) for layer in layers]
    if tf.config.list_physical_devices("GPU"):
        return []
    # The slow kernel is oneDNN's bfloat16 one; float32 runs keep the kernel without spending start-up time on it.
    layers = [layer for layer in layers if layer.compute_dtype == "bfloat16"]
    chosen = []
    logger, level = tf.get_logger(), tf.get_logger().level
    logger.setLevel("ERROR")  # one trace per layer shape is the point here, not a retracing problem
    try:
        for layer in layers:
            shape = _input_shape(layer)
            if shape is None:
                continue
            native, matmul = _time_both(layer, (batch, *shape))
            if matmul < _MARGIN * native:
                chosen.append((layer, native, matmul))
    finally:
        logger.setLevel(level)
    return chosen


def _input_shape(layer):
    try:
        shape = tuple(layer.input.shape[1:])
    except (AttributeError, ValueError):
        return None
    return shape if all(isinstance(d, int) for d in shape) else None


def _time_both(layer, shape):
    """Milliseconds of the kernel's filter gradient and of the products, best of two calls each;
    timed once per shape in a process (a ResNet repeats a few shapes many times)."""
    return _timed_shape(tuple(shape), layer.kernel_size[0], layer.filters, layer.compute_dtype)


@functools.lru_cache(maxsize=None)
def _timed_shape(shape, k, co, dtype):
    import tensorflow as tf

    dtype = tf.as_dtype(dtype)
    x = tf.cast(tf.random.normal(shape), dtype)
    dy = tf.cast(tf.random.normal((*shape[:3], co)), dtype)
    native = tf.function(lambda x, dy: tf.compat.v1.nn.conv2d_backprop_filter(
        x, [k, k, shape[-1], co], dy, [1, 1, 1, 1], "SAME"))
    matmul = tf.function(lambda x, dy: filter_grad_by_matmul(x, dy, k))
    return _best_ms(native, x, dy), _best_ms(matmul, x, dy)


def _best_ms(fn, *args):
    fn(*args).numpy()  # tracing
    return 1e3 * min(timed(lambda: fn(*args).numpy())[1] for _ in range(2))


@contextlib.contextmanager
def filter_gradients(model, batch, mode="auto", echo=print):
    """Route the chosen layers' filter gradients (see `choose`) while the block runs."""
    chosen = choose(model, batch, mode)
    for layer, native, matmul in chosen:
        layer.convolution_op = routed_conv  # an instance attribute: Keras' class and config stay as they are
    if chosen:
        timed = [f"{layer.name} {native:.0f}->{matmul:.0f} ms" for layer, native, matmul in chosen if native]
        echo(f"conv filter gradients as matrix products ({mode}): {len(chosen)} layers"
             + (f" ({', '.join(timed)})" if timed else ""))
    try:
        yield [layer for layer, _, _ in chosen]
    finally:
        for layer, _, _ in chosen:
            layer.__dict__.pop("convolution_op", None)
