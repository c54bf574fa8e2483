"""Every module defining a Keras object registered with package="kclassify" (for .keras loading)."""
from kclassify import layers  # noqa: F401
from kclassify.train import distill, optim, schedules  # noqa: F401
