"""Process-level set-up that must happen before TensorFlow runs anything: logging, logical CPU
devices, seeds, precision, and the distribution strategy. TensorFlow and Keras are imported inside
the functions on purpose: this is where they are first imported, quietly, and the TensorFlow-free
boundary (import kclassify, the CLI's start, recipe checks) imports this module."""
import contextlib
import importlib.util
import json
import logging
import os
import re
import sys
import tempfile
import time
import warnings

from kclassify.errors import KClassifyError, RecipeError


NOISE = re.compile(r"absl::InitializeLog|oneDNN custom operations|cuda drivers|cuInit|cpu_feature_guard|"
                   r"rebuild TensorFlow|AVX|TF-TRT|computation_placer|Unable to register cu")


@contextlib.contextmanager
def filtered_stderr(extra=None):
    """Hold the process's stderr (fd 2, where TensorFlow's C++ logs go) and re-emit it without
    the start-up chatter (CUDA probing on a CPU box, oneDNN notices)."""
    with tempfile.TemporaryFile() as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            for line in tmp.read().decode(errors="replace").splitlines():
                if not NOISE.search(line) and not (extra and extra.search(line)):
                    print(line, file=sys.stderr)


CONVERTER_NOISE = re.compile(r"fully_quantize:|XNNPACK delegate for CPU|^\s*$")


@contextlib.contextmanager
def quiet_conversion():
    """TFLite conversion and calibration without their chatter: the deprecated-interpreter and
    trackable_obj warnings, the per-conversion "fully_quantize" line and the delegate notice."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), filtered_stderr(CONVERTER_NOISE):
            warnings.simplefilter("ignore")
            yield
    finally:
        absl.setLevel(level)


def tensorflow_installed():
    """Whether TensorFlow can be imported here, asked without importing it (a GPU machine may carry
    JAX alone: there the JAX backend trains without it)."""
    try:
        return importlib.util.find_spec("tensorflow") is not None
    except (ImportError, ValueError):
        return False


TENSORFLOW_MODULES = ("tensorflow", "tensorflow_datasets", "tf_keras", "tensorflow_model_optimization")


def tensorflow_missing(reason=None):
    """The one-line error where TensorFlow is needed and not installed, saying for what."""
    why = f": {reason}" if reason else ""
    return KClassifyError(f"TensorFlow is not installed in this Python ({sys.executable}){why}; `pip install -e .` "
                          "in the kclassify checkout installs it with the rest")


def quiet_tensorflow(reason=None):
    """Import TensorFlow with its start-up chatter filtered out of stderr; where it is not installed,
    a KClassifyError saying what needed it (`reason`)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if sys.modules.get("tensorflow") is not None:
        return
    with filtered_stderr():
        try:
            import tensorflow as tf
        except ModuleNotFoundError as exc:
            if exc.name != "tensorflow":
                raise

            raise tensorflow_missing(reason) from None
        tf.config.list_physical_devices()


def quiet_framework():
    """Import what a training command runs on, quietly: TensorFlow on its own backend, and on
    another backend where it is installed (tf.data feeds every backend there). On JAX without
    TensorFlow nothing is imported here: the engine runs on JAX, numpy and Keras alone."""
    if keras_backend() == "tensorflow" or tensorflow_installed():
        quiet_tensorflow("Keras' backend here is tensorflow (KERAS_BACKEND=jax trains without it)")


_COMMAND_STARTED = None


def mark_command_start(when=None):
    """The CLI calls this first thing: a time budget counts the whole command from here."""
    global _COMMAND_STARTED
    _COMMAND_STARTED = when or time.time()


def command_started():
    return _COMMAND_STARTED


def keras_backend():
    """The Keras backend this process runs on, read as Keras reads it (KERAS_BACKEND, then
    keras.json) without importing Keras: the recipe checks run before any framework loads."""
    if "keras" in sys.modules and hasattr(sys.modules["keras"], "backend"):
        return sys.modules["keras"].backend.backend()
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json")) as f:
            return json.load(f).get("backend", "tensorflow")
    except (OSError, ValueError):
        return "tensorflow"


BACKENDS = ("tensorflow", "jax")


def check_backend(recipe, backend, echo=print, tensorflow=None):
    """What is TensorFlow's own is refused by name on another backend where the recipe sets it,
    and set aside with a line where it is a default (fused_bn) or `auto` would pick it; the
    recipe's runtime section is replaced by what this backend runs. `tensorflow`: whether it is
    installed (default: asked); without it, what needs tf.data or tf.summary is refused too."""
    if backend not in BACKENDS:
        raise RecipeError(f"Keras backend {backend!r}: kclassify trains on {' or '.join(BACKENDS)} "
                          "(set KERAS_BACKEND)")
    if backend == "tensorflow":
        return
    tensorflow = tensorflow_installed() if tensorflow is None else tensorflow
    rt, t = recipe.runtime, recipe.train
    refused = [name for name, tf_only in (
        (f"runtime.strategy: {rt.strategy}", rt.strategy == "multi_worker"),
        ("runtime.cpu_devices", rt.cpu_devices is not None),
        ("runtime.fused_bn: true", rt.fused_bn and "fused_bn" in rt.model_fields_set),
        ("runtime.conv_filter_grad: matmul", rt.conv_filter_grad == "matmul"),
        ("train.data_filter", t.data_filter is not None),
        ("train.low_res", t.low_res is not None)) if tf_only]
    if refused:
        raise RecipeError(f"{refused[0]} runs on TensorFlow only (a tf.distribute strategy, a TensorFlow kernel "
                          f"or a TensorFlow step); on {backend} leave it out, or run with KERAS_BACKEND=tensorflow")
    if not tensorflow:
        check_without_tensorflow(recipe, backend, echo)
    if rt.fused_bn:
        echo(f"runtime.fused_bn: TensorFlow's fused BatchNorm kernel is set aside on {backend} (Keras' own ops)")
    # augment_on auto is host on JAX where TensorFlow's tf.data is there to feed it: device is what the
    # recipe asks for (augment/device.py), or what runs without TensorFlow
    augment_on = "device" if rt.augment_on == "device" or not tensorflow else "host"
    recipe.runtime = rt.model_copy(update={"fused_bn": False, "conv_filter_grad": "native", "augment_on": augment_on})


def check_without_tensorflow(recipe, backend, echo=print):
    """On a backend other than TensorFlow, in a Python without it: what reads data or augments
    through tf.data, or logs through tf.summary, is refused by name; runtime.augment_on auto becomes
    device (the numpy stream and the augmentation inside the compiled step), with a line."""
    d, rt = recipe.data, recipe.runtime
    refused = [(name, why) for name, why, on in (
        (f"data.source: {d.source}", "reads its records with tf.data; image_folder or npz data is read without it",
         d.source in ("tfrecord", "tfds")),
        ("runtime.augment_on: host", "augments in tf.data threads; runtime.augment_on device augments inside the "
         "compiled step without it", rt.augment_on == "host"),
        ("output.tensorboard: true", "writes its logs with tf.summary; history.csv and report.html hold the curves",
         recipe.output.tensorboard and "tensorboard" in recipe.output.model_fields_set)) if on]
    if refused:
        name, why = refused[0]
        raise RecipeError(f"{name} needs TensorFlow, which is not installed in this Python ({sys.executable}): it "
                          f"{why}. Leave it out on {backend}, or install TensorFlow")
    if rt.augment_on == "auto":
        echo(f"runtime.augment_on: auto -> device on {backend} without TensorFlow (the numpy stream; the "
             "augmentation runs inside the compiled step)")
    if recipe.output.tensorboard:
        echo("output.tensorboard: set aside (TensorBoard logs are written with tf.summary: TensorFlow is not installed)")
        recipe.output = recipe.output.model_copy(update={"tensorboard": False})


def is_chief(runtime):
    """Whether this process writes the run folder: always, except the non-chief workers of a
    multi-worker run (TF_CONFIG task index > 0; worker 0 is the chief)."""
    if runtime.strategy != "multi_worker":
        return True
    task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {})
    return task.get("type", "worker") in ("chief",) or (task.get("type", "worker") == "worker"
                                                          and int(task.get("index", 0)) == 0)


class OneProcess:
    """What the engine asks of a tf.distribute strategy, on a backend that has none (JAX, where
    keras.distribution splits each batch inside the compiled step): a scope that changes nothing,
    and one replica."""

    num_replicas_in_sync = 1

    def scope(self):
        return contextlib.nullcontext()


def setup(runtime, echo=print):
    """Apply a RuntimeConfig; returns the strategy to build and fit under: a tf.distribute strategy
    on TensorFlow, a OneProcess on JAX."""
    if keras_backend() == "jax":
        return setup_jax(runtime, echo)
    quiet_tensorflow()
    import keras
    import tensorflow as tf

    if runtime.strategy == "multi_worker":
        strategy = multi_worker_strategy()  # must exist before anything else touches the runtime
    if runtime.cpu_devices:
        cpus = tf.config.list_physical_devices("CPU")
        try:
            tf.config.set_logical_device_configuration(
                cpus[0], [tf.config.LogicalDeviceConfiguration()] * runtime.cpu_devices)
        except RuntimeError:
            pass  # already initialized in this process (tests): keep what is there
    with filtered_stderr():
        tf.config.list_logical_devices()  # initializes the runtime (and its CUDA probe) quietly
    keras.utils.set_random_seed(runtime.seed)
    precision = resolve_precision(runtime.precision, echo)
    keras.mixed_precision.set_global_policy(precision)
    if precision != "float32" and not tf.config.list_physical_devices("GPU") and runtime.precision != "auto":
        if not bf16_is_faster():
            # Measured (FACTS.md): CPUs without bf16 arithmetic compute mixed precision in float32
            # with extra casts: 6-12x slower for bfloat16 without XLA.
            warnings.warn(f"runtime.precision={runtime.precision} on a CPU without bf16 arithmetic: expect it to be "
                          "slower than float32, not faster; use float32 (or auto) on this CPU", stacklevel=2)
    if runtime.strategy == "multi_worker":
        return strategy
    if runtime.strategy == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices=devices)
    return tf.distribute.get_strategy()


def setup_jax(runtime, echo=print):
    """The JAX backend's set-up (check_backend refused TensorFlow's options): TensorFlow imported
    quietly where it is installed (its tf.data may feed the run), the seed, the precision, and with
    runtime.strategy mirrored keras.distribution's DataParallel over every local device (variables
    replicated, each batch split along its first axis; the compiled step is one program over the
    global batch, so BatchNorm sees the global batch as on one device). Set before the model is
    built, so its variables are created replicated."""
    quiet_framework()
    import keras

    keras.utils.set_random_seed(runtime.seed)
    keras.mixed_precision.set_global_policy(resolve_precision(runtime.precision, echo))
    if runtime.strategy == "mirrored":
        devices = keras.distribution.list_devices()
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        echo(f"runtime.strategy mirrored on jax: keras.distribution.DataParallel over {len(devices)} devices")
    return OneProcess()


def multi_worker_strategy():
    import tensorflow as tf

    if "cluster" not in json.loads(os.environ.get("TF_CONFIG", "{}")):
        raise RecipeError("runtime.strategy multi_worker needs TF_CONFIG (the cluster and this task); "
                          "`kclassify launch --workers N RECIPE` sets it for local workers")
    with filtered_stderr():
        return tf.distribute.MultiWorkerMirroredStrategy()


def resolve_precision(precision, echo=print):
    """runtime.precision `auto`: mixed_float16 on a GPU; mixed_bfloat16 on a CPU where bf16 matmuls
    measure faster than float32 (AMX or AVX512-BF16); float32 otherwise."""
    if precision != "auto":
        return precision
    if keras_backend() == "jax":
        import jax  # the backend's own module

        # bfloat16 needs no loss scaling; a CPU under XLA's own kernels is not measured here: float32
        chosen = "mixed_bfloat16" if jax.default_backend() == "gpu" else "float32"
    else:
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            chosen = "mixed_float16"
        else:
            chosen = "mixed_bfloat16" if bf16_is_faster() else "float32"
    echo(f"precision: auto -> {chosen}")
    return chosen


_BF16_FASTER = None


def bf16_is_faster(size=1024, reps=5):
    """Time a float32 and a bfloat16 matmul of `size` x `size` on this CPU (about half a second)."""
    global _BF16_FASTER
    if _BF16_FASTER is None:
        import tensorflow as tf

        def seconds(dtype):
            a = tf.random.normal((size, size), dtype=tf.float32)
            a = tf.cast(a, dtype)
            fn = tf.function(lambda x: tf.matmul(x, x))
            fn(a).numpy()
            t = time.perf_counter()
            for _ in range(reps):
                fn(a).numpy()
            return time.perf_counter() - t

        _BF16_FASTER = seconds(tf.bfloat16) < 0.8 * seconds(tf.float32)
    return _BF16_FASTER


def augment_on_device(setting):
    """runtime.augment_on `setting`: device, or auto where TensorFlow sees a GPU (measured: a GPU trains
    airbench94 at about 280,000 images/s, the host stream gives about 21,000 a core). On another
    backend check_backend has already chosen host or device."""
    if setting != "auto":
        return setting == "device"
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def timed(fn, clock=None):
    """(fn(), the seconds it took): perf_counter unless a clock is given."""
    clock = clock or time.perf_counter
    t = clock()
    out = fn()
    return out, clock() - t
