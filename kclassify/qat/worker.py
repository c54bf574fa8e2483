"""The child process of the QAT bridge: `python -m kclassify.qat.worker JOB.json`.

It imports numpy, tensorflow, tf_keras and tensorflow-model-optimization, and of kclassify only
modules that never import Keras 3: the job file (job.py), the layer table and translation
(table.py, translate.py), the converter set-up and representative dataset (export.convert, the
same code `kclassify export` runs) and the translation/flip augmentation (augment.basic, the
same code training runs). It blocks the Keras 3 package, which tfmot and the TFLite converter would
otherwise import to probe for it. The job file (job.Job) says what to do, every setting spelled
out; the answer is written as JSON to job.result (with "error" on failure, exit code 2 for a
job or translation problem, 1 for anything unexpected). Progress lines go to stdout.

Tasks:
- "check": translate each listed model, compare with its Keras 3 outputs and (with "quantize")
  let tfmot annotate and apply quantization to it, without training.
- "qat": translate and check, quantize (tfmot default 8-bit scheme, per-channel weights; custom
  layers and Multiply quantize their output only), calibrate the activation ranges, fine-tune
  the layers the description marks trainable (with the run's optimizer), convert to a
  full-integer .tflite (uint8 input, float32 output). Snapshots of the activation ranges every
  train.range_log_every steps show when they settle.
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


def translated(files, tolerance):
    """(tf_keras model, roles, max |difference|) for one job.ModelFiles."""
    from kclassify.qat import translate

    with open(files.graph) as f:
        graph = json.load(f)
    try:
        model, roles = translate.build(graph, load_arrays(files.weights))
        diff = translate.check(model, load_arrays(files.samples), tolerance)
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

def augmenter(augment):
    """(uint8 images, labels) -> (float32 images, labels) with the recipe's translation and flip,
    drawn per image (augment.basic's translate_batch and flip_batch: the functions training uses)."""
    import tensorflow as tf

    from kclassify.augment.basic import flip_batch, translate_batch

    def augmented(x, y):
        if augment.crop_pad:
            x = translate_batch(x, augment.crop_pad, augment.pad_mode)
        if augment.flip:
            x = flip_batch(x, tf.random.uniform([tf.shape(x)[0]]) < 0.5)
        return tf.cast(x, tf.float32), y

    return augmented


def train_dataset(images, labels, batch_size, augment, seed, repeat):
    """Shuffled training batches, augmented here unless augment.on_device (then `augment_in_step`)."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((images, labels.astype("int32")))
    ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size)
    if not augment.on_device:
        ds = ds.map(augmenter(augment), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def augment_in_step(model, augment):
    """runtime.augment_on device: the compiled train step augments the raw batch (tf_keras's fit
    calls model.train_step)."""
    prepare, step = augmenter(augment), model.train_step
    model.train_step = lambda data: step(prepare(*data))


def optimizer(train, total_steps):
    """The run's optimizer family at the job's rate, cosine to 0 over the QAT steps."""
    import tf_keras as K

    schedule = K.optimizers.schedules.CosineDecay(train.lr, max(1, total_steps))
    if train.optimizer == "adamw":
        return K.optimizers.AdamW(schedule, weight_decay=train.weight_decay)
    return K.optimizers.SGD(schedule, momentum=train.momentum)


class RangeLog:
    """Snapshots of every activation range (max - min of the moving-average fake-quant nodes)
    every `every` steps: the largest and the median relative change since the previous snapshot,
    to see when the ranges settle. (Per-channel weight ranges follow the weights: not logged.)"""

    def __init__(self, q_model, every):
        self.every, self.rows = every, []
        pairs = {}
        for var in q_model.weights:
            name = var.name.split(":")[0]
            for end in ("_min", "_max"):
                if name.endswith(end) and var.shape.rank == 0:
                    pairs.setdefault(name[:-len(end)], {})[end] = var
        self.ranges = [(p["_min"], p["_max"]) for p in pairs.values() if len(p) == 2]
        self.last = self.snapshot()

    def snapshot(self):
        import numpy as np

        return np.array([float(hi.numpy() - lo.numpy()) for lo, hi in self.ranges])

    def callback(self):
        import numpy as np
        import tf_keras as K

        log = self

        class Snap(K.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.step = 0

            def on_train_batch_end(self, batch, logs=None):
                self.step += 1
                if log.every and self.step % log.every == 0 and log.ranges:
                    now = log.snapshot()
                    change = np.abs(now - log.last) / np.maximum(np.abs(log.last), 1e-6)
                    log.rows.append({"step": self.step, "max_rel_change": float(change.max()),
                                     "median_rel_change": float(np.median(change)), "loss": float(logs["loss"])})
                    log.last = now

        return Snap()


def fine_tune(model, train, data, callbacks=()):
    """The job's optimizer and rate, plain cross-entropy on the job's training images; returns
    (history rows, steps per epoch)."""
    import tf_keras as K

    images, labels = data["images"], data["labels"]
    steps = int(train.steps_per_epoch or math.ceil(len(images) / train.batch_size))
    history = []
    model.compile(optimizer=optimizer(train, train.epochs * steps), loss=K.losses.SparseCategoricalCrossentropy(),
                  metrics=["accuracy"])
    if train.epochs == 0:
        return history, steps

    class Progress(K.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.time()

        def on_epoch_end(self, epoch, logs=None):
            row = {"epoch": epoch + 1, "loss": float(logs["loss"]), "accuracy": float(logs["accuracy"]),
                   "seconds": round(time.time() - self.start, 1)}
            history.append(row)
            say(f"  epoch {epoch + 1}/{train.epochs}: loss {row['loss']:.4f}, train accuracy {row['accuracy']:.4f} "
                f"({row['seconds']} s)")

    ds = train_dataset(images, labels, train.batch_size, train.augment, train.seed,
                       repeat=train.steps_per_epoch is not None)
    if train.augment.on_device:
        augment_in_step(model, train.augment)
    model.fit(ds, epochs=train.epochs, steps_per_epoch=steps, verbose=0, callbacks=[Progress(), *callbacks])
    return history, steps


def accuracy(model, split, batch_size=256):
    """top-1 of the tf_keras model while it fine-tunes, in this child process (legacy Keras: the
    package's Predictor is Keras 3). The shipped file is measured by the parent, as every export."""
    import numpy as np

    probs = model.predict(split["images"].astype(np.float32), batch_size=batch_size, verbose=0)
    return float((probs.argmax(1) == split["labels"]).mean())


# ---------------------------------------------------------------- conversion

def convert(model, mode, calibration=None):
    """A tf_keras model to .tflite bytes in a mode of the export table ("float32", or "int8":
    uint8 input, float32 output), set up by the same code as `kclassify export`. For a QAT model
    the ranges come from its fake-quant nodes; the converter still wants a representative
    dataset for an int8-only target, and uses it only for the few tensors no fake-quant node
    covers (inside HardSigmoid)."""
    import tensorflow as tf

    from kclassify.tflite.converter_options import configure

    converter = configure(tf.lite.TFLiteConverter.from_keras_model(model), mode, calibration)
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
    for files in job.models:
        row = {"name": files.name}
        start = time.time()
        try:
            model, roles, diff = translated(files, job.tolerance)
            row.update(max_abs_diff=diff, layers=len(model.layers), replaced=_replaced(roles),
                       frozen=sorted(layer.name for layer in model.layers if not layer.trainable and layer.weights))
            if files.quantize:
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

    train = job.train
    K.utils.set_random_seed(train.seed)
    model, roles, diff = translated(job.model, job.tolerance)
    say(f"translated {model.name} to tf_keras: max |diff| vs Keras 3 {diff:.2e}")
    if train.freeze_bn:
        set_bn_trainable(model, False)
    frozen = sum(1 for layer in model.layers if layer.weights and not layer.trainable)
    q_model = quantize(model, roles)
    data, val = load_arrays(job.data.train), load_arrays(job.data.val)
    calib = load_arrays(job.data.calibration)["images"]
    calibration = RangeCalibration()
    batches = calibration.run(q_model, calib.astype(np.float32), train.calibration_batches, train.batch_size)
    say(f"calibrated activation ranges on {batches} batches")
    top1_before = accuracy(q_model, val)
    ranges = RangeLog(q_model, train.range_log_every)
    start = time.time()
    history, steps = fine_tune(q_model, train, data, callbacks=[ranges.callback()])
    pin_input_range(q_model)
    top1_after = accuracy(q_model, val)
    size = write_bytes(job.out, convert(q_model, "int8", calib))
    return {"translation_max_abs_diff": diff, "history": history, "steps_per_epoch": steps,
            "steps": steps * train.epochs, "train_seconds": round(time.time() - start, 1),
            "calibration_batches": batches, "frozen_layers": frozen, "fake_quant_top1_before": top1_before,
            "fake_quant_top1": top1_after, "range_log": ranges.rows, "file": job.out, "size_bytes": size,
            "replaced": _replaced(roles)}


def _replaced(roles):
    return {r: sorted(n for n, v in roles.items() if v == r) for r in ("fixed", "affine", "output")}


# tfmot 0.8.1 prunes Conv2D and Dense kernels; it registers DepthwiseConv2D with no prunable weights.
PRUNABLE = ("Conv2D", "Dense")


def pruning_schedule(pruning, total_steps):
    import tensorflow_model_optimization as tfmot

    S = tfmot.sparsity.keras
    frequency = max(1, min(100, total_steps // 10))
    if pruning.schedule == "constant":
        return S.ConstantSparsity(pruning.sparsity, begin_step=0, frequency=frequency), frequency, 0
    # Reach the target at 3/4 of the run (on a mask-update step), then fine-tune with the mask fixed.
    end = max(frequency, int(0.75 * total_steps) // frequency * frequency)
    end = min(end, max(0, total_steps - 1) // frequency * frequency)
    return S.PolynomialDecay(0.0, pruning.sparsity, begin_step=0, end_step=end, frequency=frequency), frequency, end


def task_prune(job):
    import numpy as np
    import tensorflow_model_optimization as tfmot
    import tf_keras as K

    from kclassify.qat.translate import ROLE_LAYER

    S = tfmot.sparsity.keras
    train, pruning = job.train, job.prune
    K.utils.set_random_seed(train.seed)
    model, roles, diff = translated(job.model, job.tolerance)
    say(f"translated {model.name} to tf_keras: max |diff| vs Keras 3 {diff:.2e}")
    if train.freeze_bn:
        set_bn_trainable(model, False)
    calib = load_arrays(job.data.calibration)["images"]
    dense_size = write_bytes(pruning.dense_out, convert(model, "float32"))
    if train.epochs < 1:
        raise WorkerError("pruning needs at least one epoch of fine-tuning (the masks are updated by training steps)")
    data, val = load_arrays(job.data.train), load_arrays(job.data.val)
    steps = int(train.steps_per_epoch or math.ceil(len(data["images"]) / train.batch_size))
    schedule, frequency, end_step = pruning_schedule(pruning, train.epochs * steps)
    pruned_names = [l.name for l in model.layers if type(l).__name__ in PRUNABLE and l.trainable
                    and roles.get(l.name, ROLE_LAYER) == ROLE_LAYER]

    def wrap(layer):
        if layer.name in pruned_names:
            return S.prune_low_magnitude(layer, pruning_schedule=schedule)
        return layer

    pruned = K.models.clone_model(model, clone_function=wrap)
    start = time.time()
    history, steps = fine_tune(pruned, train, data, callbacks=[S.UpdatePruningStep()])
    stripped = S.strip_pruning(pruned)
    per_layer, zeros, total = {}, 0, 0
    for name in pruned_names:
        kernel = np.asarray(stripped.get_layer(name).kernel.numpy())
        z = int((kernel == 0).sum())
        per_layer[name] = {"params": int(kernel.size), "sparsity": z / kernel.size}
        zeros, total = zeros + z, total + kernel.size
    result = {"translation_max_abs_diff": diff, "history": history, "steps_per_epoch": steps,
              "train_seconds": round(time.time() - start, 1), "schedule": pruning.schedule,
              "target_sparsity": pruning.sparsity, "mask_update_frequency": frequency,
              "end_step": end_step, "sparsity": zeros / max(total, 1), "prunable_params": int(total),
              "per_layer": per_layer, "pruned_top1": accuracy(stripped, val),
              "file": job.out, "size_bytes": write_bytes(job.out, convert(stripped, "float32")),
              "dense_file": pruning.dense_out, "dense_size_bytes": dense_size}
    if pruning.int8_out:
        result["int8_file"] = pruning.int8_out
        result["int8_size_bytes"] = write_bytes(pruning.int8_out, convert(stripped, "int8", calib))
    return result


TASKS = {"check": task_check, "qat": task_qat, "prune": task_prune}


def main(argv=None):
    from kclassify.qat.job import Job, JobError

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m kclassify.qat.worker JOB.json", file=sys.stderr)
        return 2
    code, result, result_file = 0, {}, None
    try:
        with open(argv[0]) as f:
            result_file = json.load(f).get("result")
        job = Job.read(argv[0])
        isolate()
        result = TASKS[job.task](job)
    except (WorkerError, JobError) as exc:
        code, result = 2, {"error": str(exc)}
    except Exception as exc:  # a bug or an environment problem: keep the traceback for the parent
        code, result = 1, {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    try:
        result["env"] = environment()
    except Exception:  # pragma: no cover (TensorFlow failed to import: the error says so)
        pass
    if result_file:
        with open(result_file, "w") as f:
            json.dump(result, f, indent=1)
    return code


if __name__ == "__main__":
    sys.exit(main())
