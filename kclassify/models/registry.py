"""The model registry. Importing kclassify.models registers every family."""
from kclassify.registry import Registry

MODELS = Registry("model")
