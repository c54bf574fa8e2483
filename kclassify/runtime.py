"""Process-level set-up that must happen before TensorFlow runs anything: logging, logical CPU
devices, seeds, precision, and the distribution strategy."""
import contextlib
import os
import re
import sys
import tempfile
import warnings


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
    import logging

    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), filtered_stderr(CONVERTER_NOISE):
            warnings.simplefilter("ignore")
            yield
    finally:
        absl.setLevel(level)


def quiet_tensorflow():
    """Import TensorFlow with its start-up chatter filtered out of stderr."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules:
        return
    with filtered_stderr():
        import tensorflow as tf

        tf.config.list_physical_devices()


def setup(runtime):
    """Apply a RuntimeConfig; returns the tf.distribute strategy to build and fit under."""
    quiet_tensorflow()
    import keras
    import tensorflow as tf

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
    keras.mixed_precision.set_global_policy(runtime.precision)
    if runtime.precision != "float32" and not tf.config.list_physical_devices("GPU"):
        # Measured here (FACTS.md): no bf16/fp16 arithmetic on these CPUs, so mixed precision
        # computes in float32 with extra casts: 6-12x slower for bfloat16 without XLA.
        warnings.warn(f"runtime.precision={runtime.precision} on a CPU without a GPU: expect it to be slower "
                      "than float32, not faster; use float32 on CPUs", stacklevel=2)
    if runtime.strategy == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices=devices)
    return tf.distribute.get_strategy()
