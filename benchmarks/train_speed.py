"""Training throughput: kclassify's loop against a plain `model.fit` on the same Keras model and the
same uint8 arrays, in one process, rounds interleaved (the machines are shared and noisy: read the
ratio, not the absolute figures). Also the achieved training GFLOP/s against a measured matmul peak.

    python benchmarks/train_speed.py [--model airbench94] [--batch 512] [--precision auto] [--steps 12]
    python benchmarks/train_speed.py --sweep       # one subprocess per setting: what helps on this CPU
    python benchmarks/train_speed.py --layers      # each layer's forward + backward: where a step goes
    python benchmarks/train_speed.py --conv-grad-ab  # runtime.conv_filter_grad auto against native

Prints JSON: kclassify_img_per_s, keras_img_per_s, ratio (same work: no augmentation on either
side; kclassify trains BatchNorm through the fused kernel, runtime.fused_bn), ratio_same_ops
(kclassify with Keras' own BatchNorm ops, as model.fit runs them: the loops alone),
kclassify_aug_img_per_s (with the recipe's translate + alternating flip),
kclassify_native_conv_grad_img_per_s and conv_grad_speedup (runtime.conv_filter_grad native against
the default auto, which computes filter gradients as matrix products where they are faster), gflops,
the peaks, and the CPU flags that matter.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared" / "data" / "cifar10-train-png.tar.gz"


def cpu_flags():
    try:
        flags = set(next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split())
    except (OSError, StopIteration):
        return []
    keep = ["avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile"]
    return [f for f in keep if f in flags]


def cpu_model():
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


def matmul_peak(dtype, size=2048, reps=10):
    import tensorflow as tf

    a = tf.cast(tf.random.normal((size, size)), dtype)
    fn = tf.function(lambda x: tf.matmul(x, x))
    fn(a).numpy()
    t = time.perf_counter()
    for _ in range(reps):
        fn(a).numpy()
    return 2 * size ** 3 * reps / (time.perf_counter() - t) / 1e9


def arrays(n, path):
    """(uint8 images, int labels, source): the archive's training images when it is there, else random."""
    import numpy as np

    if Path(path).is_file():
        from kclassify.data import load_data
        from kclassify.recipe import DataConfig

        data = load_data(DataConfig(source="image_folder", path=str(path), subdir="train", val_count=1000))
        return data.train.images[:n], data.train.labels[:n], Path(path).name
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n), "random uint8"


def channel_stats(x):
    """(mean, std) per channel of uint8 images, for the model's normalization layer."""
    return x.reshape(-1, 3).mean(0).tolist(), x.reshape(-1, 3).std(0).tolist()


def build(args, mean_std):
    import keras

    from kclassify.models import build_model

    model = build_model(args.model, 10, (32, 32, 3), mean=mean_std[0], std=mean_std[1], bn_momentum=0.6,
                        **json.loads(args.params))
    opt = keras.optimizers.SGD(0.1, momentum=0.85, nesterov=True)
    model.compile(opt, keras.losses.CategoricalCrossentropy(label_smoothing=0.2),
                  metrics=[keras.metrics.CategoricalAccuracy(name="top1")], jit_compile=args.jit)
    return model


def plain_fit_rate(model, x, y, batch, steps):
    """A hand-written tf.data pipeline and model.fit: img/s of the second epoch."""
    import keras
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x)).batch(batch, drop_remainder=True)
    ds = ds.map(lambda a, b: (tf.cast(a, tf.float32), tf.one_hot(b, 10)), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.repeat().prefetch(tf.data.AUTOTUNE)

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds = time.perf_counter() - self.t

    timer = Timer()
    model.fit(ds, epochs=2, steps_per_epoch=steps, verbose=0, callbacks=[timer])
    return batch * steps / timer.seconds


def kclassify_rate(args, x, y, steps, augment, fused_bn=True, conv_grad=None):
    """kclassify's engine (recipe -> Run -> Engine.fit) on the same arrays: img/s of epoch 2."""
    import numpy as np

    from kclassify.data.sources import Dataset, Split
    from kclassify.recipe import validate
    from kclassify.run import Run
    from kclassify.train.engine import Engine, Phase
    from kclassify.train.setup import build_for_run, fit_setup
    import tensorflow as tf

    recipe = validate({
        "model": {"name": args.model, "params": json.loads(args.params)},
        "augment": {"crop_pad": 2, "flip": "alternate"} if augment else {},
        "train": {"epochs": 2, "batch_size": args.batch, "steps_per_epoch": steps, "lr": 0.1, "momentum": 0.85,
                  "label_smoothing": 0.2, "bn_momentum": 0.6, "val_every": 0},
        "runtime": {"jit_compile": args.jit, "verbose": 0, "fused_bn": fused_bn and not args.keras_bn,
                    "conv_filter_grad": conv_grad or args.conv_grad},
        "output": {"tensorboard": False, "plots": False, "report": False, "keep_checkpoints": 1}})
    small = Split(x[:64], y[:64].astype(np.int32))
    data = Dataset(Split(x, y.astype(np.int32)), small, [str(i) for i in range(10)])
    with tempfile.TemporaryDirectory() as tmp:
        run = Run.start(recipe, tmp, echo=lambda *a: None)
        run.begin(recipe, data, echo=lambda *a: None)
        strategy = tf.distribute.get_strategy()
        model = build_for_run(recipe, data, strategy, fresh_start=True, echo=lambda *a: None)
        engine = Engine(recipe, run, data, model, strategy, echo=lambda *a: None)
        engine._checkpoint = lambda trainer: None  # time the loop, not the disk
        engine.fit([Phase("fit", recipe.train, 2, setup=lambda m: fit_setup(m, recipe.train))])
        run.release()
        return args.batch * steps / run.state["history"][-1]["seconds"]


def measure(args):
    import numpy as np

    from kclassify import runtime
    from kclassify.recipe import RuntimeConfig

    runtime.setup(RuntimeConfig(precision=args.precision, verbose=0), echo=lambda *a: None)
    import keras

    from kclassify.commands.profile import profile_model

    n = args.batch * args.steps
    x, y, source = arrays(n, args.data)
    stats = channel_stats(x)
    plain, ours, ours_keras_bn, ours_aug, ours_native_grad = [], [], [], [], []
    for _ in range(args.rounds):
        if not args.only_kclassify:
            plain.append(plain_fit_rate(build(args, stats), x, y, args.batch, args.steps))
        ours.append(kclassify_rate(args, x, y, args.steps, augment=False))
        if not args.only_kclassify:
            ours_keras_bn.append(kclassify_rate(args, x, y, args.steps, augment=False, fused_bn=False))
            ours_aug.append(kclassify_rate(args, x, y, args.steps, augment=True))
            ours_native_grad.append(kclassify_rate(args, x, y, args.steps, augment=False, conv_grad="native"))
    if args.only_kclassify:
        return {"kclassify_img_per_s": round(float(np.median(ours)), 1), "batch": args.batch,
                "precision": keras.mixed_precision.global_policy().name}
    macs = profile_model(build(args, stats))["macs"]
    policy = keras.mixed_precision.global_policy().name
    ours_rate, plain_rate = float(np.median(ours)), float(np.median(plain))
    return {"model": args.model, "params": json.loads(args.params), "batch": args.batch, "steps": args.steps,
            "precision": policy, "jit_compile": args.jit, "data": source,
            "kclassify_img_per_s": round(ours_rate, 1), "keras_img_per_s": round(plain_rate, 1),
            "ratio": round(ours_rate / plain_rate, 3),
            "kclassify_keras_bn_img_per_s": round(float(np.median(ours_keras_bn)), 1),
            "ratio_same_ops": round(float(np.median(ours_keras_bn)) / plain_rate, 3),
            "kclassify_aug_img_per_s": round(float(np.median(ours_aug)), 1),
            # runtime.conv_filter_grad native: every filter gradient from the convolution kernel's own pass
            "kclassify_native_conv_grad_img_per_s": round(float(np.median(ours_native_grad)), 1),
            "conv_grad_speedup": round(ours_rate / float(np.median(ours_native_grad)), 3),
            "rounds": {"kclassify": [round(r, 1) for r in ours], "kclassify_keras_bn": [round(r, 1) for r in ours_keras_bn],
                       "keras": [round(r, 1) for r in plain],
                       "kclassify_native_conv_grad": [round(r, 1) for r in ours_native_grad]},
            "macs_per_image": macs, "train_gflops": round(ours_rate * 6 * macs / 1e9, 1),
            "matmul_peak_gflops": {"float32": round(matmul_peak("float32"), 1),
                                   "bfloat16": round(matmul_peak("bfloat16"), 1)},
            "cpu": cpu_model(), "cpu_flags": cpu_flags(), "threads": os.environ.get("TF_NUM_INTRAOP_THREADS", "default")}


def conv_grad_ab(args):
    """runtime.conv_filter_grad (auto, or --conv-grad matmul) against native on two copies of one
    model, fused BatchNorm as fit trains it, each round timing both back to back (this class of box
    drifts by up to 2x between minutes): medians of the per-step seconds."""
    import contextlib

    import numpy as np

    from kclassify import runtime
    from kclassify.recipe import RuntimeConfig

    runtime.setup(RuntimeConfig(precision=args.precision, verbose=0), echo=lambda *a: None)
    import keras

    from kclassify.layers.conv_grad import filter_gradients
    from kclassify.layers.fused_bn import fuse_batchnorm

    x, labels, source = arrays(args.batch * 2, args.data)
    y = keras.utils.to_categorical(labels, 10)
    stats = channel_stats(x)
    mode = "auto" if args.conv_grad == "native" else args.conv_grad
    models, routed = {}, []
    with contextlib.ExitStack() as stack:
        for name in ("native", mode):
            models[name] = build(args, stats)
            fuse_batchnorm(models[name])
        models[mode].set_weights(models["native"].get_weights())
        stack.enter_context(filter_gradients(models[mode], args.batch, mode, echo=routed.append))
        times = {name: [] for name in models}

        class StepTimer(keras.callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                self.t = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                self.seen.append(time.perf_counter() - self.t)

        for model in models.values():
            model.fit(x, y, batch_size=args.batch, epochs=1, verbose=0)  # tracing
        for _ in range(args.rounds):
            for name, model in models.items():
                timer = StepTimer()
                timer.seen = times[name]
                model.fit(x, y, batch_size=args.batch, epochs=1, verbose=0, callbacks=[timer])
    native, other = float(np.median(times["native"])), float(np.median(times[mode]))
    return {"model": args.model, "params": json.loads(args.params), "batch": args.batch, "data": source,
            "precision": keras.mixed_precision.global_policy().name, "mode": mode, "routed": routed,
            "native_s_per_step": round(native, 3), f"{mode}_s_per_step": round(other, 3),
            "speedup": round(native / other, 3),
            "steps": {name: [round(t, 2) for t in seen] for name, seen in times.items()},
            "cpu": cpu_model(), "cpu_flags": cpu_flags()}


def _timed(fn, arg, reps):
    """Seconds a call of a tf.function, its results fetched, after two untimed calls (tracing)."""
    import tensorflow as tf

    def call():
        return [o.numpy() for o in tf.nest.flatten(fn(arg)) if o is not None]

    call()
    call()
    t = time.perf_counter()
    for _ in range(reps):
        call()
    return (time.perf_counter() - t) / reps


def layer_times(args):
    """Each layer alone, forward and backward (its input's gradient and its weights') on a batch of
    random inputs in the run's precision, against one whole training step of the same network: the
    layers that take a step's time, and the GFLOP/s each arithmetic layer reaches."""
    import tensorflow as tf

    from kclassify import runtime
    from kclassify.layers.fused_bn import fuse_batchnorm
    from kclassify.commands.profile import layer_macs
    from kclassify.recipe import RuntimeConfig

    runtime.setup(RuntimeConfig(precision=args.precision, verbose=0), echo=lambda *a: None)
    import keras

    model = build(args, ([125.0] * 3, [63.0] * 3))
    if not args.keras_bn:
        fuse_batchnorm(model)  # as kclassify fit trains it (runtime.fused_bn)
    rows = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        x = tf.cast(tf.random.normal((args.batch, *layer.input.shape[1:])), layer.input.dtype)

        @tf.function
        def forward_backward(x, layer=layer):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_sum(tf.cast(layer(x, training=True), "float32")) * 1e-3
            return tape.gradient(loss, [x, *layer.trainable_variables])

        seconds = _timed(forward_backward, x, args.steps)
        macs = layer_macs(layer)
        rows.append({"layer": layer.name, "class": type(layer).__name__, "ms": round(1e3 * seconds, 1),
                     **({"gflops": round(6 * macs * args.batch / seconds / 1e9, 1)} if macs else {})})
    x = tf.cast(tf.random.uniform((args.batch, *model.input_shape[1:]), 0, 255), "float32")
    y = tf.one_hot(tf.random.uniform((args.batch,), 0, 10, "int32"), 10)
    step = _timed(tf.function(model.train_step), (x, y), args.steps)
    total = sum(r["ms"] for r in rows)
    return {"model": args.model, "params": json.loads(args.params), "batch": args.batch,
            "precision": keras.mixed_precision.global_policy().name, "train_step_ms": round(1e3 * step, 1),
            "layers_sum_ms": round(total, 1),
            "share": {k: round(sum(r["ms"] for r in rows if r["class"] == k) / total, 3)
                      for k in sorted({r["class"] for r in rows})},
            "layers": rows, "matmul_peak_gflops": {"float32": round(matmul_peak("float32"), 1),
                                                   "bfloat16": round(matmul_peak("bfloat16"), 1)},
            "cpu": cpu_model(), "cpu_flags": cpu_flags()}


SWEEP = [
    ("default (batch 512, auto precision)", [], {}),
    ("batch 256", ["--batch", "256"], {}),
    ("batch 512", ["--batch", "512"], {}),
    ("batch 1024", ["--batch", "1024", "--steps", "6"], {}),
    ("float32", ["--precision", "float32"], {}),
    ("mixed_bfloat16", ["--precision", "mixed_bfloat16"], {}),
    ("XLA (jit_compile)", ["--jit"], {}),
    ("relu", ["--params", '{"act": "relu"}'], {}),
    ("gelu", ["--params", '{"act": "gelu"}'], {}),
    ("Keras BN (runtime.fused_bn false)", ["--keras-bn"], {}),
    ("inter-op threads 1", [], {"TF_NUM_INTEROP_THREADS": "1"}),
    ("intra-op threads 1", [], {"TF_NUM_INTRAOP_THREADS": "1"}),
    ("oneDNN off", [], {"TF_ENABLE_ONEDNN_OPTS": "0"}),
    ("conv filter gradients native (runtime.conv_filter_grad)", ["--conv-grad", "native"], {}),
    ("conv filter gradients as matrix products everywhere", ["--conv-grad", "matmul"], {}),
]


def sweep(args):
    rows = {}
    for name, extra, env in SWEEP:
        cmd = [sys.executable, __file__, "--model", args.model, "--params", args.params, "--rounds", "1", "--only-kclassify",
               "--precision", args.precision, "--batch", str(args.batch), "--steps", str(args.steps), "--data", args.data,
               *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
        try:
            out = json.loads(proc.stdout)
            rows[name] = out
        except (json.JSONDecodeError, KeyError):
            rows[name] = {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
        print(name, rows[name], file=sys.stderr, flush=True)
    return {"model": args.model, "sweep": rows, "cpu": cpu_model(), "cpu_flags": cpu_flags()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="airbench94")
    parser.add_argument("--params", default="{}", help="model.params as JSON")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per epoch")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--data", default=str(CIFAR), help="an archive of train/CLASS/IMAGE (default: CIFAR-10); "
                        "'random' (or a missing file): uniform uint8 noise")
    parser.add_argument("--jit", action="store_true")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--keras-bn", action="store_true", help="runtime.fused_bn false (Keras' own BatchNorm ops)")
    parser.add_argument("--conv-grad", default="auto", choices=["auto", "native", "matmul"],
                        help="runtime.conv_filter_grad for kclassify's loop")
    parser.add_argument("--conv-grad-ab", action="store_true",
                        help="filter gradients routed (runtime.conv_filter_grad) against native, steps interleaved")
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--layers", action="store_true", help="each layer's forward + backward against a whole step")
    parser.add_argument("--only-kclassify", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    run = sweep if args.sweep else layer_times if args.layers else conv_grad_ab if args.conv_grad_ab else measure
    print(json.dumps(run(args), indent=1))


if __name__ == "__main__":
    main()
