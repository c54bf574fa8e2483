"""DropBlock2D (Ghiasi et al. 2018, Algorithm 1): drop contiguous block_size x block_size
regions of a feature map during training, the identity at inference."""
import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kclassify")
class DropBlock2D(keras.layers.Layer):
    """`keep_prob` is the target; the value in use lives in the non-trainable variable
    `current_keep_prob`, which DropBlockSchedule moves from 1.0 to the target during training
    without a recompile. One mask per channel (the paper's Algorithm 1, which it found to work
    better than a mask shared across channels). Channels-last input [B, H, W, C]."""

    def __init__(self, keep_prob=0.9, block_size=7, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 < keep_prob <= 1.0:
            raise ValueError(f"keep_prob must lie in (0, 1], got {keep_prob}")
        self.keep_prob = float(keep_prob)
        self.block_size = int(block_size)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, input_shape):
        self.current_keep_prob = self.add_weight(
            name="current_keep_prob", shape=(), initializer=keras.initializers.Constant(self.keep_prob),
            trainable=False)

    def call(self, x, training=False):
        if not training:
            return x
        h, w = x.shape[1], x.shape[2]
        size = min(self.block_size, h, w)  # a block larger than the map drops the whole map
        keep = ops.cast(self.current_keep_prob, x.dtype)
        # gamma: the seed rate that drops about 1 - keep_prob of the units (Eq. 1), counting only
        # the centers whose whole block fits in the map.
        gamma = (1.0 - keep) / size**2 * (h * w) / ((h - size + 1) * (w - size + 1))
        valid = ops.pad(ops.ones((h - size + 1, w - size + 1), x.dtype),
                        [[size // 2, (size - 1) // 2], [size // 2, (size - 1) // 2]])
        seeds = keras.random.uniform(ops.shape(x), seed=self.seed_generator, dtype=x.dtype) < gamma
        seeds = ops.cast(seeds, x.dtype) * valid[None, :, :, None]
        # Grow every seed into a block: max pooling with stride 1 spreads each 1 over its block.
        dropped = ops.max_pool(seeds, size, strides=1, padding="same")
        mask = 1.0 - dropped
        # Renormalize by the fraction kept, so the layer keeps the mean activation.
        return x * mask * (ops.cast(ops.size(mask), x.dtype) / ops.maximum(ops.sum(mask), 1.0))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "keep_prob": self.keep_prob, "block_size": self.block_size,
                "seed": self.seed}
