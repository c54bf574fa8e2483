"""Process-level set-up that must happen before TensorFlow runs anything: logging, logical CPU
devices, seeds, precision, and the distribution strategy."""
import os
import re
import sys
import tempfile


NOISE = re.compile(r"absl::InitializeLog|oneDNN custom operations|cuda drivers|cuInit|cpu_feature_guard|"
                   r"rebuild TensorFlow|AVX|TF-TRT|computation_placer|Unable to register cu")


def quiet_tensorflow():
    """Import TensorFlow with its start-up chatter (CUDA probing on a CPU box, oneDNN notices)
    filtered out of stderr; anything else it prints still reaches the user."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules:
        return
    with tempfile.TemporaryFile() as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        for line in tmp.read().decode(errors="replace").splitlines():
            if not NOISE.search(line):
                print(line, file=sys.stderr)


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
    keras.utils.set_random_seed(runtime.seed)
    keras.mixed_precision.set_global_policy(runtime.precision)
    if runtime.strategy == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices=devices)
    return tf.distribute.get_strategy()
