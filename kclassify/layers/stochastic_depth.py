"""Stochastic depth (Huang et al. 2016) as a per-sample drop of a residual branch; Keras 3 has
no such layer."""
import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kclassify")
class StochasticDepth(keras.layers.Layer):
    """During training, zero the whole input of a sample with probability `rate` and scale the
    kept ones by 1 / (1 - rate), so inference is the identity (nothing left in an export)."""

    def __init__(self, rate, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=False):
        if not training or self.rate == 0:
            return x
        keep = 1.0 - self.rate
        shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
        mask = ops.floor(keep + keras.random.uniform(shape, seed=self.seed_generator, dtype=x.dtype))
        return x * mask / keep

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}
