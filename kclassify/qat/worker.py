"""The child process of the QAT bridge: `python -m kclassify.qat.worker JOB.json`.

It imports numpy, tensorflow, tf_keras and tensorflow-model-optimization only: never `keras` (it
blocks the Keras 3 package, which tfmot and the TFLite converter would otherwise import to probe
for it) and no kclassify module beyond the light package and kclassify.qat.translate. The job
file says what to do; the answer is written as JSON to job["result"] (with "error" on failure,
exit code 2 for a translation problem, 1 for anything unexpected). Progress lines go to stdout.

Tasks:
- "check": translate each listed model, compare with its Keras 3 outputs and (with "quantize")
  let tfmot annotate and apply quantization to it, without training.
- "qat": translate and check, quantize (tfmot default 8-bit scheme, per-channel weights; custom
  layers and Multiply quantize their output only), calibrate the activation ranges, fine-tune,
  convert to a full-integer .tflite (uint8 input, float32 output).
- "prune": translate and check, prune_low_magnitude the trainable Conv2D and Dense kernels (tfmot
  does not prune depthwise kernels) to the target sparsity while fine-tuning, strip, convert to
  float32 (and optionally int8) .tflite; report the achieved sparsity.
"""
import json
import math
import os
import sys
import time
import traceback

EMA_DECAY = 0.99  # activation-range EMA while fine-tuning (tfmot's 0.999 barely leaves its [-6, 6] start in a short run)


class WorkerError(Exception):
    """A problem the user can fix (bad job, model the bridge cannot take): exit code 2."""


def isolate():
    """Make this process tf_keras-only before TensorFlow is imported."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if sys.modules.get("keras") is not None:
        raise WorkerError("Keras 3 was imported before the QAT worker started; run it as its own process")
    sys.modules["keras"] = None  # `import keras` now fails fast: tfmot and the converter fall back to tf_keras
    sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != "_AfterKerasImport"]


def say(message):
    print(message, flush=True)


def environment():
    import tensorflow as tf
    import tf_keras

    versions = {"tensorflow": tf.__version__, "tf_keras": tf_keras.__version__}
    try:
        from importlib.metadata import version

        versions["tensorflow_model_optimization"] = version("tensorflow-model-optimization")
    except Exception:  # pragma: no cover
        pass
    return {"TF_USE_LEGACY_KERAS": os.environ.get("TF_USE_LEGACY_KERAS"),
            "keras_imported": sys.modules.get("keras") is not None,
            "kclassify_modules": sorted(m for m in sys.modules if m.startswith("kclassify")),
            "versions": versions}


# ---------------------------------------------------------------- translation

def load_arrays(path):
    import numpy as np

    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def translated(spec, tolerance):
    """(tf_keras model, roles, max |difference|) for one {"graph", "weights", "samples"} entry."""
    from kclassify.qat import translate

    with open(spec["graph"]) as f:
        graph = json.load(f)
    try:
        model, roles = translate.build(graph, load_arrays(spec["weights"]))
        diff = translate.check(model, load_arrays(spec["samples"]), tolerance)
    except translate.TranslationError as exc:
        raise WorkerError(str(exc)) from None
    return model, roles, diff


def set_bn_trainable(model, trainable):
    import tf_keras as K

    for layer in model.layers:
        if isinstance(layer, K.layers.BatchNormalization):
            layer.trainable = trainable


# ---------------------------------------------------------------- quantization

_OUTPUT_CONFIG = None


def output_quantize_config():
    """A tfmot QuantizeConfig that quantizes a layer's output only (no weights)."""
    global _OUTPUT_CONFIG
    if _OUTPUT_CONFIG is None:
        import tensorflow_model_optimization as tfmot

        Q = tfmot.quantization.keras

        class OutputQuantizeConfig(Q.QuantizeConfig):
            def get_weights_and_quantizers(self, layer):
                return []

            def get_activations_and_quantizers(self, layer):
                return []

            def set_quantize_weights(self, layer, quantize_weights):
                pass

            def set_quantize_activations(self, layer, quantize_activations):
                pass

            def get_output_quantizers(self, layer):
                return [Q.quantizers.MovingAverageQuantizer(num_bits=8, per_axis=False, symmetric=False,
                                                            narrow_range=False)]

            def get_config(self):
                return {}

        _OUTPUT_CONFIG = OutputQuantizeConfig
    return _OUTPUT_CONFIG


def quantize(model, roles):
    """tfmot quantize_annotate + quantize_apply; custom layers and Multiply quantize their output."""
    import tensorflow_model_optimization as tfmot
    import tf_keras as K

    from kclassify.qat.translate import CUSTOM_OBJECTS, ROLE_OUTPUT

    Q = tfmot.quantization.keras
    config = output_quantize_config()

    def annotate(layer):
        if roles.get(layer.name) == ROLE_OUTPUT:
            return Q.quantize_annotate_layer(layer, quantize_config=config())
        return Q.quantize_annotate_layer(layer)

    annotated = K.models.clone_model(model, clone_function=annotate)
    try:
        with Q.quantize_scope({**CUSTOM_OBJECTS, "OutputQuantizeConfig": config}):
            q_model = Q.quantize_apply(annotated)
    except (ValueError, RuntimeError) as exc:
        raise WorkerError(f"tfmot refused to quantize {model.name!r}: {str(exc).splitlines()[0][:400]}") from None
    # tfmot's wrapper lists every weight it quantizes as trainable, even a frozen layer's: the
    # normalization and option-A shortcut kernels would train (and the normalization, fed raw
    # 0..255 pixels, gets huge gradients and wrecks the net within an epoch). They stay frozen:
    # the frozen inner layer already lists them as non-trainable.
    for layer in q_model.layers:
        inner = getattr(layer, "layer", None)
        if inner is not None and not inner.trainable and hasattr(layer, "_trainable_weights"):
            layer._trainable_weights = []
    return q_model


class RangeCalibration:
    """Activation ranges from data instead of tfmot's [-6, 6] start.

    tfmot's MovingAverageQuantizer keeps an EMA (decay 0.999) of each batch's min/max starting at
    -6/6, so a fine-tuning run of a few hundred steps barely moves it. This patches the quantizer
    to read its decay from a variable: 1 - 1/(i+1) over the calibration batches (the plain mean
    of their ranges), then EMA_DECAY while fine-tuning. The model input is pinned to 0..255, so
    the uint8 input of the .tflite takes raw pixels with scale 1 and zero point 0."""

    def __init__(self):
        import tensorflow as tf
        from tensorflow_model_optimization.python.core.quantization.keras import quant_ops

        self.decay = tf.Variable(0.0, trainable=False, dtype=tf.float32)
        original = quant_ops.MovingAvgQuantize
        decay = self.decay

        def moving_avg_quantize(*args, **kwargs):
            kwargs["ema_decay"] = decay
            return original(*args, **kwargs)

        quant_ops.MovingAvgQuantize = moving_avg_quantize

    def run(self, q_model, images, batches, batch_size):
        import tensorflow as tf
        import tf_keras as K

        dropouts = [(l.layer, l.layer.rate) for l in q_model.layers
                    if isinstance(getattr(l, "layer", None), K.layers.Dropout)]
        for layer, _ in dropouts:
            layer.rate = 0.0
        step = tf.function(lambda x: q_model(x, training=True))
        pin_input_range(q_model)
        count = 0
        for i in range(batches):
            batch = images[i * batch_size:(i + 1) * batch_size]
            if not len(batch):
                break
            self.decay.assign(1.0 - 1.0 / (i + 1))
            step(tf.constant(batch, tf.float32))
            count += 1
        for layer, rate in dropouts:
            layer.rate = rate
        self.decay.assign(EMA_DECAY)
        pin_input_range(q_model)
        return count


def pin_input_range(q_model):
    for layer in q_model.layers:
        if type(layer).__name__ == "QuantizeLayer":
            for var in layer.weights:
                if var.name.endswith("_min:0"):
                    var.assign(0.0)
                elif var.name.endswith("_max:0"):
                    var.assign(255.0)


# ---------------------------------------------------------------- training

def train_dataset(images, labels, batch_size, augment, seed, repeat):
    import tensorflow as tf

    h, w, c = images.shape[1:]
    pad = int(augment.get("crop_pad", 0))
    mode = "REFLECT" if augment.get("pad_mode", "reflect") == "reflect" and pad < min(h, w) else "CONSTANT"
    flip = bool(augment.get("flip", False))

    def aug(x, y):
        x = tf.cast(x, tf.float32)
        if pad:
            x = tf.pad(x, [[pad, pad], [pad, pad], [0, 0]], mode=mode)
            x = tf.image.random_crop(x, [h, w, c])
        if flip:
            x = tf.image.random_flip_left_right(x)
        return x, y

    ds = tf.data.Dataset.from_tensor_slices((images, labels.astype("int32")))
    ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    return ds.map(aug, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def fine_tune(model, job, data, callbacks=()):
    """SGD momentum, cosine from job["lr"] to 0, plain cross-entropy on the job's training images."""
    import tf_keras as K

    epochs = int(job["epochs"])
    images, labels = data["images"], data["labels"]
    batch = int(job["batch_size"])
    steps = int(job.get("steps_per_epoch") or math.ceil(len(images) / batch))
    history = []
    model.compile(optimizer=K.optimizers.SGD(K.optimizers.schedules.CosineDecay(float(job["lr"]), max(1, epochs * steps)),
                                             momentum=float(job.get("momentum", 0.9))),
                  loss=K.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
    if epochs == 0:
        return history, steps

    class Progress(K.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.time()

        def on_epoch_end(self, epoch, logs=None):
            row = {"epoch": epoch + 1, "loss": float(logs["loss"]), "accuracy": float(logs["accuracy"]),
                   "seconds": round(time.time() - self.start, 1)}
            history.append(row)
            say(f"  epoch {epoch + 1}/{epochs}: loss {row['loss']:.4f}, train accuracy {row['accuracy']:.4f} "
                f"({row['seconds']} s)")

    ds = train_dataset(images, labels, batch, job.get("augment", {}), int(job.get("seed", 0)),
                       repeat=bool(job.get("steps_per_epoch")))
    model.fit(ds, epochs=epochs, steps_per_epoch=steps, verbose=0, callbacks=[Progress(), *callbacks])
    return history, steps


def accuracy(model, split, batch_size=256):
    import numpy as np

    if split is None:
        return None
    probs = model.predict(split["images"].astype(np.float32), batch_size=batch_size, verbose=0)
    return float((probs.argmax(1) == split["labels"]).mean())


# ---------------------------------------------------------------- conversion

def representative(images):
    import numpy as np

    def gen():
        for image in images:
            yield [image[None].astype(np.float32)]
    return gen


def convert(model, int8, calibration=None):
    """A tf_keras model to .tflite bytes: float32, or full integer with uint8 input and float32
    output. For a QAT model the ranges come from its fake-quant nodes; the converter still wants
    a representative dataset for an int8-only target, and uses it only for the few tensors no
    fake-quant node covers (inside HardSigmoid)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if int8:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.float32
        converter.representative_dataset = representative(calibration)
    try:
        return converter.convert()
    except Exception as exc:
        raise WorkerError(f"TFLite conversion failed: {str(exc).strip().splitlines()[-1][:400]}") from None


def write_bytes(path, blob):
    with open(path, "wb") as f:
        f.write(blob)
    return len(blob)


# ---------------------------------------------------------------- tasks

def task_check(job):
    results = []
    for spec in job["models"]:
        row = {"name": spec.get("name", spec["graph"])}
        start = time.time()
        try:
            model, roles, diff = translated(spec, float(job.get("tolerance", 1e-5)))
            row.update(max_abs_diff=diff, layers=len(model.layers),
                       replaced={r: sorted(n for n, v in roles.items() if v == r) for r in ("fixed", "affine", "output")})
            if spec.get("quantize", job.get("quantize")):
                q_model = quantize(model, roles)
                row["quantized_layers"] = len(q_model.layers)
        except WorkerError as exc:
            row["error"] = str(exc)
        row["seconds"] = round(time.time() - start, 1)
        say(f"  {row['name']}: " + (row["error"] if "error" in row else f"max |diff| {row['max_abs_diff']:.2e}"))
        results.append(row)
    return {"models": results}


def task_qat(job):
    import numpy as np
    import tf_keras as K

    K.utils.set_random_seed(int(job.get("seed", 0)))
    model, roles, diff = translated(job["model"], float(job.get("tolerance", 1e-5)))
    say(f"translated {model.name} to tf_keras: max |diff| vs Keras 3 {diff:.2e}")
    if job.get("freeze_bn", True):
        set_bn_trainable(model, False)
    q_model = quantize(model, roles)
    train, val = load_arrays(job["train"]), load_arrays(job["val"]) if job.get("val") else None
    calib = load_arrays(job["calibration"])["images"]
    calibration = RangeCalibration()
    batches = calibration.run(q_model, calib.astype(np.float32), int(job.get("calibration_batches", 8)),
                              int(job["batch_size"]))
    say(f"calibrated activation ranges on {batches} batches")
    top1_before = accuracy(q_model, val)
    start = time.time()
    history, steps = fine_tune(q_model, job, train)
    pin_input_range(q_model)
    top1_after = accuracy(q_model, val)
    blob = convert(q_model, int8=True, calibration=calib)
    size = write_bytes(job["out"], blob)
    return {"translation_max_abs_diff": diff, "history": history, "steps_per_epoch": steps,
            "train_seconds": round(time.time() - start, 1), "calibration_batches": batches,
            "fake_quant_top1_before": top1_before, "fake_quant_top1": top1_after,
            "file": job["out"], "size_bytes": size, "replaced": _replaced(roles)}


def _replaced(roles):
    return {r: sorted(n for n, v in roles.items() if v == r) for r in ("fixed", "affine", "output")}


# tfmot 0.8.1 prunes Conv2D and Dense kernels; it registers DepthwiseConv2D with no prunable weights.
PRUNABLE = ("Conv2D", "Dense")


def pruning_schedule(job, total_steps):
    import tensorflow_model_optimization as tfmot

    S = tfmot.sparsity.keras
    sparsity = float(job["sparsity"])
    frequency = max(1, min(100, total_steps // 10))
    if job.get("schedule", "polynomial") == "constant":
        return S.ConstantSparsity(sparsity, begin_step=0, frequency=frequency), frequency, 0
    # Reach the target at 3/4 of the run (on a mask-update step), then fine-tune with the mask fixed.
    end = max(frequency, int(0.75 * total_steps) // frequency * frequency)
    end = min(end, max(0, total_steps - 1) // frequency * frequency)
    return S.PolynomialDecay(0.0, sparsity, begin_step=0, end_step=end, frequency=frequency), frequency, end


def task_prune(job):
    import numpy as np
    import tensorflow_model_optimization as tfmot
    import tf_keras as K

    from kclassify.qat.translate import ROLE_LAYER

    S = tfmot.sparsity.keras
    K.utils.set_random_seed(int(job.get("seed", 0)))
    model, roles, diff = translated(job["model"], float(job.get("tolerance", 1e-5)))
    say(f"translated {model.name} to tf_keras: max |diff| vs Keras 3 {diff:.2e}")
    if job.get("freeze_bn", False):
        set_bn_trainable(model, False)
    calib = load_arrays(job["calibration"])["images"]
    dense_size = write_bytes(job["dense_out"], convert(model, int8=False))
    if int(job["epochs"]) < 1:
        raise WorkerError("pruning needs at least one epoch of fine-tuning (the masks are updated by training steps)")
    train, val = load_arrays(job["train"]), load_arrays(job["val"]) if job.get("val") else None
    batch = int(job["batch_size"])
    steps = int(job.get("steps_per_epoch") or math.ceil(len(train["images"]) / batch))
    schedule, frequency, end_step = pruning_schedule(job, int(job["epochs"]) * steps)
    pruned_names = [l.name for l in model.layers if type(l).__name__ in PRUNABLE and l.trainable
                    and roles.get(l.name, ROLE_LAYER) == ROLE_LAYER]

    def wrap(layer):
        if layer.name in pruned_names:
            return S.prune_low_magnitude(layer, pruning_schedule=schedule)
        return layer

    pruned = K.models.clone_model(model, clone_function=wrap)
    start = time.time()
    history, steps = fine_tune(pruned, job, train, callbacks=[S.UpdatePruningStep()])
    stripped = S.strip_pruning(pruned)
    per_layer, zeros, total = {}, 0, 0
    for name in pruned_names:
        kernel = np.asarray(stripped.get_layer(name).kernel.numpy())
        z = int((kernel == 0).sum())
        per_layer[name] = {"params": int(kernel.size), "sparsity": z / kernel.size}
        zeros, total = zeros + z, total + kernel.size
    result = {"translation_max_abs_diff": diff, "history": history, "steps_per_epoch": steps,
              "train_seconds": round(time.time() - start, 1), "schedule": job.get("schedule", "polynomial"),
              "target_sparsity": float(job["sparsity"]), "mask_update_frequency": frequency,
              "end_step": end_step, "sparsity": zeros / max(total, 1), "prunable_params": int(total),
              "per_layer": per_layer, "pruned_top1": accuracy(stripped, val),
              "file": job["out"], "size_bytes": write_bytes(job["out"], convert(stripped, int8=False)),
              "dense_file": job["dense_out"], "dense_size_bytes": dense_size}
    if job.get("int8_out"):
        result["int8_file"] = job["int8_out"]
        result["int8_size_bytes"] = write_bytes(job["int8_out"], convert(stripped, int8=True, calibration=calib))
    return result


TASKS = {"check": task_check, "qat": task_qat, "prune": task_prune}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m kclassify.qat.worker JOB.json", file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        job = json.load(f)
    code, result = 0, {}
    try:
        isolate()
        if job.get("task") not in TASKS:
            raise WorkerError(f"unknown task {job.get('task')!r}; one of {', '.join(TASKS)}")
        result = TASKS[job["task"]](job)
    except WorkerError as exc:
        code, result = 2, {"error": str(exc)}
    except Exception as exc:  # a bug or an environment problem: keep the traceback for the parent
        code, result = 1, {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    try:
        result["env"] = environment()
    except Exception:  # pragma: no cover (TensorFlow failed to import: the error says so)
        pass
    with open(job["result"], "w") as f:
        json.dump(result, f, indent=1)
    return code


if __name__ == "__main__":
    sys.exit(main())
