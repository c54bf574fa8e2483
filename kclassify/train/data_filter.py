"""Data filtering by a proxy network (`train.data_filter`), as airbench96_faster trains (K. Jordan,
github KellerJordan/cifar10-airbench: 96% on CIFAR-10 from 3.1 PFLOP against 4.9 without it).

Every step draws `train.batch_size` images; a small proxy network ranks them by its own loss and the
model trains on the hardest `keep` share only. The proxy costs little (airbench93 at widths 32/64/64
is 1/15 of airbench95's MACs): one forward pass on the whole batch every step, and on every
`proxy_every`-th step it learns from its own hardest share (the same schedule as the model, SGD).
So a step costs the model's step on the kept images plus the proxy's share (measured on a 2-core CPU:
4% of airbench95's step, 30% of airbench94's), and the data stream moves twice as fast through the
training set: easy images stop costing backward passes. It pays on long schedules, where most images
are already learned; at 6-18 epochs it did not (README, "Fast training").

The proxy lives beside the model, not in it: it is never saved in model.keras or exported. Its
weights and optimizer state go into every checkpoint with the weight averages, so a resumed run
ranks exactly as the run it continues would have.
"""
import numpy as np
import tensorflow as tf

from kclassify.train.optim import make_optimizer

PREFIX = "proxy_"  # its arrays' names in a checkpoint's extra-arrays file


class DataFilter:
    def __init__(self, cfg, proxy, batch):
        self.cfg, self.proxy = cfg, proxy
        self.keep = cfg.kept(batch)
        self.optimizer = None
        self._learns = None  # a scalar bool tensor function: does the proxy learn at this step

    def compile(self, train, setup, steps_per_epoch, schedule, iterations, total_steps):
        """The proxy's optimizer (the recipe's, SGD where it is Muon; its momentum, decay and BatchNorm
        multipliers, from `setup(proxy)`: the phase's trainable set, as the model's) at the model's
        learning rate of the same step: `schedule(iterations)` of the model's optimizer, so a
        budget's replan and a recovery's halving reach it too."""
        multipliers = setup(self.proxy)
        plain = train.model_copy(update={"optimizer": "sgd" if train.optimizer == "muon" else train.optimizer})
        self.optimizer = make_optimizer(plain, steps_per_epoch, self.proxy, multipliers, total_steps,
                                        learning_rate=lambda: schedule(iterations))
        self.optimizer.build(self.proxy.trainable_variables)
        self._learns = lambda: tf.equal(tf.math.floormod(iterations, self.cfg.proxy_every), 0)

    def wrap(self, train_step):
        """A train step on the full drawn batch: rank, let the proxy learn when due, then the
        model's own `train_step` on the kept images (sample weights follow their images)."""
        def step(data):
            x, y = data[0], data[1]
            kept = tf.cond(self._learns(), lambda: self._learn(x, y), lambda: self._rank(x, y))
            return train_step(tuple(tf.gather(part, kept) for part in data))

        return step

    def _losses(self, x, y):
        # Batch statistics, as airbench's proxy ranks (it stays in training mode throughout).
        probs = tf.cast(self.proxy(x, training=True), tf.float32)
        return -tf.reduce_sum(tf.cast(y, tf.float32) * tf.math.log(tf.clip_by_value(probs, 1e-7, 1.0)), axis=-1)

    def _rank(self, x, y):
        return tf.math.top_k(self._losses(x, y), self.keep, sorted=False).indices

    def _learn(self, x, y):
        variables = self.proxy.trainable_variables
        with tf.GradientTape() as tape:
            losses = self._losses(x, y)
            kept = tf.math.top_k(tf.stop_gradient(losses), self.keep, sorted=False).indices
            loss = tf.reduce_mean(tf.gather(losses, kept))
        self.optimizer.apply(tape.gradient(loss, variables), variables)
        return kept

    # ------------------------------------------------------------------ checkpoints

    def arrays(self):
        out = {f"{PREFIX}w{i}": w.numpy() for i, w in enumerate(self.proxy.weights)}
        out.update({f"{PREFIX}o{i}": np.asarray(v.numpy()) for i, v in enumerate(self.optimizer.variables)})
        return out

    def restore(self, arrays):
        """The proxy as a checkpoint saved it; a checkpoint without one (written before the recipe
        asked for filtering) leaves the fresh proxy."""
        if f"{PREFIX}w0" not in arrays:
            return False
        for i, w in enumerate(self.proxy.weights):
            w.assign(arrays[f"{PREFIX}w{i}"])
        for i, v in enumerate(self.optimizer.variables):
            v.assign(arrays[f"{PREFIX}o{i}"])
        return True
