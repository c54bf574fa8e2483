"""The airbench94 recipe on a GPU, through Keras 3's JAX backend: validation top-1 against training
seconds for one or more schedule lengths and seeds, and where the step's time goes.

    KERAS_BACKEND=jax python benchmarks/airbench94_gpu.py [--recipe cifar10_airbench94] [--set k=v ...]
        [--epochs 10 16] [--seeds 3] [--arm 'KEY=VALUE;KEY=VALUE' ...] [--budget-seconds 420] [--limit N]
        [--json FILE]

Why JAX: the device machines this project is lent carry JAX with CUDA and no TensorFlow, and a
TensorFlow GPU install (the wheel and its CUDA 12 libraries, over 2 GB) cannot travel to them.
So this file runs the library's parts that are plain Keras and leaves out its TensorFlow engine:
the recipe (kclassify.recipe), the data and its stratified split (kclassify.data, PIL decoder), the
network with its Dirac and patch-whitening initialization (fit.build_for_run), the trainable set
and BN-bias multipliers (fit.fit_setup), the optimizer with the recipe's decay
(optim.make_optimizer: SGD, or Muon on the conv filters with SGD on the rest, each rate fed
per step), the schedule (schedules.WarmupSchedule, read as a per-step table so one
compiled step serves every length) and the TTA model (kclassify.tta) are kclassify's. The step is
this file's: the 45,000 training images stay on the GPU as uint8 and each batch is gathered,
flipped (alternating) and translated inside the compiled step. `speed` in the output says why:
a host pipeline that augments batches and copies them over feeds the GPU at a fraction of the
rate it trains (measured on the same machine in the same run).

Prints one JSON line per run (final validation top-1 plain and with the recipe's TTA, training
seconds without evaluation, the per-epoch curve of the live weights) and a summary at the end.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="cifar10_airbench94")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    p.add_argument("--epochs", type=float, nargs="+", default=None, help="schedule lengths (default: the recipe's)")
    p.add_argument("--arm", action="append", default=[], dest="arms", metavar="'KEY=VALUE;KEY=VALUE'",
                   help="a variant of the recipe (more --set, ';'-separated) trained on the same data; repeat "
                        "for several (each compiles its own step). Default: the recipe alone")
    p.add_argument("--seeds", type=int, default=1, help="runs per length, seeds runtime.seed + 0, 1, ...")
    p.add_argument("--precision", default="mixed_bfloat16", choices=["mixed_bfloat16", "float32"])
    p.add_argument("--budget-seconds", type=float, default=None,
                   help="start no run that the measured pace says would end after this many seconds")
    p.add_argument("--limit", type=int, default=None, help="train on this many images (a quick check)")
    p.add_argument("--speed-steps", type=int, default=30, help="steps timed per arm of the speed check (0: none)")
    p.add_argument("--json", type=Path, default=None, help="also append every JSON line to this file")
    p.add_argument("--tf-stream", type=int, default=0, metavar="BATCHES",
                   help="only time kclassify's own tf.data training stream for this recipe (needs TensorFlow) and exit")
    return p.parse_args(argv)


class _OneDevice:
    """What build_for_run needs of a tf.distribute strategy: a scope."""

    def scope(self):
        import contextlib

        return contextlib.nullcontext()


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def arm_recipes(args):
    """{arm label: recipe}: the recipe with --set, then each --arm's settings on top. Every arm is
    checked before any data is read, and must train on the base recipe's data."""
    from kclassify.recipe import load_recipe

    # TensorFlow-kernel options: this script's step runs on JAX
    fixed = ["runtime.fused_bn=false", "runtime.sync_bn=false", "runtime.conv_filter_grad=native"]
    limit = [f"data.limit={args.limit}"] if args.limit else []
    base = load_recipe(args.recipe, [*args.overrides, *fixed, *limit])
    arms = {"recipe": base} if not args.arms else {
        arm: load_recipe(args.recipe, [*args.overrides, *[kv.strip() for kv in arm.split(";") if kv.strip()],
                                       *fixed, *limit]) for arm in args.arms}
    for label, recipe in arms.items():
        refused = [] if args.tf_stream else unsupported(recipe)
        if refused:
            sys.exit(f"error: this benchmark's step does not implement {', '.join(refused)} ({label}); "
                     "train such recipes with `kclassify fit`")
        if recipe.data != base.data or recipe.augment.random_resized_crop != base.augment.random_resized_crop:
            sys.exit(f"error: arm {label!r} changes the data; run it as a separate command")
    return base, arms


def load(args):
    from kclassify.data import load_data

    recipe, arms = arm_recipes(args)
    t = time.time()
    data = load_data(recipe.data, recipe.runtime.seed, augment=recipe.augment)
    log(f"data: {len(data.train)} train / {len(data.val)} val images in {time.time() - t:.1f} s")
    return recipe, arms, data


def unsupported(recipe):
    """The recipe fields this script's step does not implement (it refuses them rather than ignore them)."""
    a, t = recipe.augment, recipe.train
    found = [name for name, on in (
        ("augment.ops", bool(a.ops)), ("augment.mixup_alpha/cutmix_alpha", a.mixup_alpha > 0 or a.cutmix_alpha > 0),
        ("augment.random_resized_crop", bool(a.random_resized_crop)), ("train.data_filter", t.data_filter is not None),
        ("train.distill", t.distill is not None), ("train.class_balance", t.class_balance != "none"), ("train.budget_minutes", bool(t.budget_minutes)),
        ("train.low_res", t.low_res is not None),
        ("train.average other than lookahead", t.average is not None and t.average.kind != "lookahead"))
        if on]
    return found


class Trainer:
    """One compiled train step and one lookahead update for the recipe's network; each run
    (length, seed) resets the state arrays, so nothing recompiles between runs."""

    def __init__(self, recipe, data):
        import jax
        import jax.numpy as jnp
        import keras

        from kclassify.train.setup import build_for_run, fit_setup
        from kclassify.train.optim import make_optimizer

        self.recipe, self.data, t = recipe, data, recipe.train
        self.batch = min(t.batch_size, len(data.train))
        self.spe = max(len(data.train) // self.batch, 1)  # as kclassify: whole batches only
        self.k = len(data.class_names)
        self.model = build_for_run(recipe, data, _OneDevice(), fresh_start=True, echo=log)
        multipliers = fit_setup(self.model, t)
        self.opt = make_optimizer(t, self.spe, self.model, multipliers, learning_rate=1.0)
        self.opt.build(self.model.trainable_variables)
        self.rate_feeds = self._rate_feeds()
        from kclassify.layers.whitening import whitening_layers

        biases = [layer.bias for layer in whitening_layers(self.model) if layer.bias is not None]
        self.whiten_index = [i for i, v in enumerate(self.model.trainable_variables) if any(v is b for b in biases)]
        self.images = jax.device_put(data.train.images)
        self.labels = jax.device_put(data.train.labels.astype("int32"))
        self.loss_fn = keras.losses.CategoricalCrossentropy()
        # No buffer donation: lookahead's weights and shadow can be one buffer (a float32 cast is a no-op).
        self.step = jax.jit(self._step)
        self.compute_only = jax.jit(self._compute)
        self.lookahead = jax.jit(self._lookahead)
        self.jnp = jnp

    def _rate_feeds(self):
        """(index in the optimizer's variables, factor of the table's rate) for each rate variable
        the step feeds: the SGD's, and with train.optimizer muon ConvMuon's at train.muon.lr over the
        schedule's peak (what kclassify.train.muon.ScaledSchedule gives it under `kclassify fit`)."""
        from kclassify.train.muon import ConvMuon
        from kclassify.train.schedules import schedule_from

        def index_of(variable):
            return next(i for i, v in enumerate(self.opt.variables) if v is variable)

        feeds = [(index_of(self.opt._learning_rate), 1.0)]
        if self.recipe.train.optimizer == "muon":
            muon = next(o for o in self.opt.optimizers if isinstance(o, ConvMuon))
            peak = schedule_from(self.recipe.train, self.spe).base_lr
            feeds.append((index_of(muon._learning_rate), self.recipe.train.muon.lr / peak))
        return feeds

    # -- the compiled pieces -------------------------------------------------------------------
    def _augment(self, x, flip, key):
        """augment.basic's flip_batch and translate_batch in JAX (TensorFlow ops cannot run on the device)."""
        import jax
        import jax.numpy as jnp

        a = self.recipe.augment
        x = jnp.where(flip[:, None, None, None], x[:, :, ::-1, :], x)  # kclassify flips before translating
        if a.crop_pad:
            p, (n, h, w, c) = a.crop_pad, x.shape
            mode = "reflect" if a.pad_mode == "reflect" else "constant"
            padded = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode=mode)
            dy, dx = jax.random.randint(key, (2, n), 0, 2 * p + 1)
            x = jax.vmap(lambda img, i, j: jax.lax.dynamic_slice(img, (i, j, 0), (h, w, c)))(padded, dy, dx)
        return x

    def _targets(self, labels):
        import jax.numpy as jnp

        t = self.recipe.train
        y = jnp.eye(self.k, dtype="float32")[labels]
        eps = t.label_smoothing
        if not eps:
            return y
        if t.label_smoothing_mode == "uniform":  # kclassify.data.pipeline.smoother's two formulas, in JAX
            return y * (1.0 - eps) + eps / self.k
        return y * (1.0 - eps) + (1.0 - y) * eps / (self.k - 1)

    def _grads_and_apply(self, state, x, y, lr, whiten_on):
        import jax
        import jax.numpy as jnp

        tv, ntv, ov = state

        def loss_of(tv, ntv):
            probs, ntv = self.model.stateless_call(tv, ntv, x, training=True)
            return self.loss_fn(y, probs), ntv

        (loss, ntv), grads = jax.value_and_grad(loss_of, has_aux=True)(tv, ntv)
        ov = list(ov)
        for i, factor in self.rate_feeds:  # the SGD's rate, and Muon's at its share of it
            ov[i] = jnp.asarray(lr * factor, ov[i].dtype)
        new_tv, ov = self.opt.stateless_apply(ov, grads, tv)
        for i in self.whiten_index:  # past train.whiten_bias_epochs the bias keeps its value
            new_tv[i] = jnp.where(whiten_on, new_tv[i], tv[i])
        return (new_tv, ntv, ov), loss

    def _step(self, state, images, labels, idx, flip, key, lr, whiten_on):
        # The arrays come in as arguments: a closed-over 138 MB array would be compiled in as a constant.
        x = self._augment(images[idx], flip, key).astype("float32")
        return self._grads_and_apply(state, x, self._targets(labels[idx]), lr, whiten_on)

    def run_step(self, state, idx, flip, key, lr, whiten_on):
        return self.step(state, self.images, self.labels, idx.astype("int32"), flip, key, lr, whiten_on)

    def _compute(self, state, x, labels, lr):
        """The same step on a batch already augmented (the speed check's arms)."""
        return self._grads_and_apply(state, x.astype("float32"), self._targets(labels), lr, True)

    def _lookahead(self, weights, shadow, decay):
        new_shadow = [decay * s + (1.0 - decay) * w.astype(s.dtype) for s, w in zip(shadow, weights)]
        return [s.astype(w.dtype) for s, w in zip(new_shadow, weights)], new_shadow

    def warm_up(self):
        """Compile the step and the lookahead update before any clock starts."""
        import jax
        import numpy as np

        state = self.fresh_state(0)
        idx = np.arange(self.batch)
        state, _ = self.run_step(state, idx, np.zeros(self.batch, bool), jax.random.PRNGKey(0), np.float32(0.0), True)
        weights, _ = self.lookahead(state[0] + state[1], [w.astype("float32") for w in state[0] + state[1]],
                                    np.float32(0.5))
        jax.block_until_ready(weights)

    # -- one run -------------------------------------------------------------------------------
    def fresh_state(self, seed):
        """A new network's weights (the recipe's initialization, seeded) and zeroed optimizer slots."""
        import keras

        from kclassify.train.setup import build_for_run

        keras.utils.set_random_seed(seed)
        recipe = self.recipe.model_copy(update={"runtime": self.recipe.runtime.model_copy(update={"seed": seed})})
        fresh = build_for_run(recipe, self.data, _OneDevice(), fresh_start=True, echo=lambda m: None)
        position = {id(v): i for i, v in enumerate(self.model.weights)}
        values = [w.numpy() for w in fresh.weights]

        def of(variables):
            return [self.jnp.array(values[position[id(v)]], dtype=v.dtype) for v in variables]

        ov = [self.jnp.zeros(v.shape, v.dtype) for v in self.opt.variables]
        return of(self.model.trainable_variables), of(self.model.non_trainable_variables), ov

    def lr_table(self, total):
        import numpy as np

        from kclassify.train.schedules import schedule_from

        schedule = schedule_from(self.recipe.train, self.spe, total_steps=total)
        return np.asarray(schedule(np.arange(total, dtype="float32")), dtype="float32")

    def train(self, epochs, seed, evaluate_each_epoch=True):
        import jax
        import numpy as np

        t = self.recipe.train
        total = max(int(round(epochs * self.spe)), 1)
        lrs = self.lr_table(total)
        state = self.fresh_state(seed)
        avg = t.average if t.average is not None and t.average.kind == "lookahead" else None
        shadow = [self.jnp.array(w, "float32") for w in state[0] + state[1]] if avg else None
        rng = np.random.default_rng(seed)
        coin = rng.integers(0, 2, len(self.data.train)).astype(bool)  # alternating flip's first-epoch coin
        key = jax.random.PRNGKey(seed)
        whiten_steps = None if t.whiten_bias_epochs is None else t.whiten_bias_epochs * self.spe
        curve, seconds, step = [], 0.0, 0
        jax.block_until_ready(state)
        while step < total:
            epoch = step // self.spe
            order = rng.permutation(len(self.data.train))
            flips = coin ^ bool(epoch % 2) if self.recipe.augment.flip == "alternate" else (
                rng.random(len(order)) < 0.5 if self.recipe.augment.flip else np.zeros(len(order), bool))
            start = time.perf_counter()
            for b in range(min(self.spe, total - step)):
                idx = order[b * self.batch:(b + 1) * self.batch]
                whiten_on = whiten_steps is None or step < whiten_steps
                state, loss = self.run_step(state, idx, flips[idx], jax.random.fold_in(key, step), lrs[step], whiten_on)
                step += 1
                if avg and step % avg.every == 0:
                    decay = avg.momentum ** avg.every * min(step / total, 1.0) ** avg.power
                    n = len(state[0])
                    weights, shadow = self.lookahead(state[0] + state[1], shadow, np.float32(decay))
                    state = (weights[:n], weights[n:], state[2])
            jax.block_until_ready(state)
            seconds += time.perf_counter() - start
            row = {"epoch": epoch + 1, "step": step, "train_seconds": round(seconds, 3), "loss": float(loss)}
            if evaluate_each_epoch or step >= total:
                row["val_top1"] = self.evaluate(state)["plain"]
            curve.append(row)
        if avg and total >= avg.every:  # training ends on the shadow (kclassify's WeightAverage.apply, once it moved)
            n = len(state[0])
            state = ([s.astype(w.dtype) for s, w in zip(shadow[:n], state[0])],
                     [s.astype(w.dtype) for s, w in zip(shadow[n:], state[1])], state[2])
        final = self.evaluate(state, tta=True)
        return {"epochs": epochs, "seed": seed, "steps": total, "batch": self.batch, "train_seconds": round(seconds, 3),
                "val_top1": final["plain"], "val_top1_tta": final["tta"], "curve": curve}

    def evaluate(self, state, tta=False):
        """Validation top-1 of the state's weights, plain and (tta) with the recipe's views."""
        import numpy as np

        from kclassify.tta import tta_model, views_of

        for var, value in zip(self.model.trainable_variables + self.model.non_trainable_variables, state[0] + state[1]):
            var.assign(self.jnp.array(value))  # a copy: Keras' predict donates the variables' buffers
        x, y = self.data.val.images.astype("float32"), self.data.val.labels
        out = {"plain": float(np.mean(self.model.predict(x, batch_size=1000, verbose=0).argmax(-1) == y))}
        if tta:
            if not hasattr(self, "_tta"):
                self._tta = tta_model(self.model, views_of(self.recipe.evaluate))
            out["tta"] = float(np.mean(self._tta.predict(x, batch_size=1000, verbose=0).argmax(-1) == y))
        return out

    # -- where a step's time goes --------------------------------------------------------------
    def speed(self, steps):
        """Images per second of three arms on the same compiled step: the batch gathered and
        augmented on the GPU (what train() does); a batch already on the GPU (compute alone); and
        a host pipeline (numpy gather, flip and reflect-pad translation on one core, then a copy
        to the GPU, overlapped one batch ahead as a prefetching loader would)."""
        import jax
        import numpy as np

        rng = np.random.default_rng(0)
        state = self.fresh_state(0)
        n, lr = len(self.data.train), np.float32(0.01)
        idx = [rng.permutation(n)[: self.batch] for _ in range(4)]
        flip = np.zeros(self.batch, bool)
        key = jax.random.PRNGKey(0)

        def timed(fn):
            nonlocal state
            for i in range(3):  # compile and warm up
                state, _ = fn(state, i)
            jax.block_until_ready(state)
            start = time.perf_counter()
            for i in range(steps):
                state, _ = fn(state, i)
            jax.block_until_ready(state)
            return round(steps * self.batch / (time.perf_counter() - start), 1)

        device = timed(lambda s, i: self.run_step(s, idx[i % 4], flip, jax.random.fold_in(key, i), lr, True))
        fixed_x = jax.device_put(self.data.train.images[idx[0]])
        fixed_y = jax.device_put(self.data.train.labels[idx[0]].astype("int32"))
        compute = timed(lambda s, i: self.compute_only(s, fixed_x, fixed_y, lr))
        host_batches = _HostBatches(self.data.train, self.batch, self.recipe.augment.crop_pad, rng)
        host = timed(lambda s, i: self.compute_only(s, *host_batches.next(), lr))
        t = time.perf_counter()
        for _ in range(steps):
            host_batches.make()
        host_alone = round(steps * self.batch / (time.perf_counter() - t), 1)
        return {"img_per_s_gpu_augment": device, "img_per_s_compute_only": compute,
                "img_per_s_host_pipeline": host, "img_per_s_host_augment_alone_one_core": host_alone,
                "batch": self.batch, "steps_timed": steps}


class _HostBatches:
    """A one-core numpy pipeline (gather, flip, reflect pad + random crop), one batch ahead on the device."""

    def __init__(self, split, batch, pad, rng):
        self.split, self.batch, self.pad, self.rng = split, batch, pad, rng
        self.ahead = None

    def make(self):
        import numpy as np

        idx = self.rng.integers(0, len(self.split), self.batch)
        x = self.split.images[idx]
        flip = self.rng.random(self.batch) < 0.5
        x = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
        if self.pad:
            p, (n, h, w, _) = self.pad, x.shape
            padded = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")
            dy, dx = self.rng.integers(0, 2 * p + 1, (2, n))
            rows = (dy[:, None] + np.arange(h))[:, :, None]
            cols = (dx[:, None] + np.arange(w))[:, None, :]
            x = padded[np.arange(n)[:, None, None], rows, cols]
        return x, self.split.labels[idx].astype("int32")

    def next(self):
        import jax

        current = self.ahead if self.ahead is not None else jax.device_put(self.make())
        self.ahead = jax.device_put(self.make())  # asynchronous: copies while the step runs
        return current


def tf_stream_speed(recipe, data, batches):
    """Images per second of the TensorFlow engine's training stream for the recipe (gather,
    alternating flip, translation, one-hot and smoothing, float32 out) on this machine's cores."""
    from kclassify.data.pipeline import recipe_train_dataset

    ds = iter(recipe_train_dataset(recipe, data.train, len(data.class_names)))
    for _ in range(3):  # warm up: tracing and the first prefetches
        next(ds)
    start = time.perf_counter()
    for _ in range(batches):
        x, _ = next(ds)
    seconds = time.perf_counter() - start
    return {"tf_data_img_per_s": round(batches * int(x.shape[0]) / seconds, 1), "batches": batches,
            "cpu_count": os.cpu_count()}


def main(argv=None):
    args = parse_args(argv)
    if args.tf_stream:
        recipe, _, data = load(args)
        print(json.dumps({"tf_stream": tf_stream_speed(recipe, data, args.tf_stream)}), flush=True)
        return
    import jax
    import keras

    started = time.time()
    keras.config.set_dtype_policy(args.precision)
    recipe, arms, data = load(args)
    devices = [f"{d.platform}:{d.device_kind}" for d in jax.devices()]
    out = open(args.json, "a") if args.json else None

    def emit(obj):
        line = json.dumps(obj)
        print(line, flush=True)
        if out:
            out.write(line + "\n")
            out.flush()

    emit({"backend": keras.backend.backend(), "jax": jax.__version__, "keras": keras.__version__, "devices": devices,
          "precision": args.precision, "recipe": args.recipe, "overrides": args.overrides,
          "train_images": len(data.train), "val_images": len(data.val)})
    results, pace = [], None  # pace: wall seconds of a run per training step, evaluation included
    for label, arm in arms.items():
        if args.budget_seconds and time.time() - started > args.budget_seconds:
            emit({"skipped": {"arm": label, "reason": "budget"}})
            continue
        t = time.time()
        trainer = Trainer(arm, data)
        trainer.warm_up()
        emit({"arm": label, "setup_seconds": round(time.time() - t, 1), "steps_per_epoch": trainer.spe,
              "parameters": trainer.model.count_params()})
        if args.speed_steps:
            emit({"arm": label, "speed": trainer.speed(args.speed_steps)})
        done = []
        for epochs in args.epochs or [arm.train.epochs]:  # a length given twice runs more seeds
            for _ in range(args.seeds):
                seed = arm.runtime.seed + sum(r["epochs"] == epochs for r in done)
                steps = round(epochs * trainer.spe)
                if args.budget_seconds and pace and time.time() - started + pace * steps > args.budget_seconds:
                    emit({"skipped": {"arm": label, "epochs": epochs, "seed": seed, "reason": "budget"}})
                    continue
                t = time.time()
                result = {"arm": label, **trainer.train(epochs, seed)}
                result["wall_seconds"] = round(time.time() - t, 1)
                pace = max(pace or 0.0, (time.time() - t) / steps)
                done.append(result)
                emit({"run": result})
        results.extend(done)
    emit({"summary": summarize(results), "total_seconds": round(time.time() - started, 1)})


def summarize(results, thresholds=(0.90, 0.91, 0.92, 0.93, 0.94)):
    """Per arm: mean figures per schedule length, and for each accuracy the training seconds of
    the shortest length whose mean TTA figure reaches it (airbench's "time to 94%"; None: none did)."""
    out = {}
    for label in dict.fromkeys(r["arm"] for r in results):
        lengths = _per_length([r for r in results if r["arm"] == label])
        reached = {}
        for target in thresholds:
            done = [row for row in lengths if row["val_top1_tta_mean"] >= target]
            reached[f"{target:.2f}"] = min((row["train_seconds_mean"] for row in done), default=None)
        out[label] = {"lengths": lengths, "train_seconds_to_tta_top1": reached}
    return out


def _per_length(results):
    import numpy as np

    rows = {}
    for r in results:
        rows.setdefault(r["epochs"], []).append(r)
    return [{"epochs": e, "runs": len(rs), "train_seconds_mean": round(float(np.mean([r["train_seconds"] for r in rs])), 2),
             "val_top1_mean": round(float(np.mean([r["val_top1"] for r in rs])), 4),
             "val_top1_tta_mean": round(float(np.mean([r["val_top1_tta"] for r in rs])), 4),
             "val_top1_tta_sd": round(float(np.std([r["val_top1_tta"] for r in rs])), 4)} for e, rs in rows.items()]


if __name__ == "__main__":
    main()
