"""kclassify: image classification on Keras 3 from recipe files.

The public API is kclassify.fit / finetune / evaluate / export / build_model (kclassify.api).
Importing kclassify stays free of TensorFlow, so a recipe is checked in milliseconds: the API
functions are looked up on first use, and the custom Keras objects kclassify saves into .keras
files are registered the moment Keras itself is imported, so `import kclassify;
keras.models.load_model(...)` works in any order.
"""
import importlib.abc
import importlib.machinery
import sys

from kclassify.registration import register_custom_objects

__version__ = "0.1.0"

API = ("fit", "finetune", "evaluate", "export", "build_model")


def __getattr__(name):
    """kclassify.fit and the other API functions, importing kclassify.api on first use (so
    processes that need only part of the package, such as the QAT worker, do not load it)."""
    if name in API:
        # The TensorFlow-free boundary: kclassify.api is imported only when a function is asked for.
        from kclassify import api

        return getattr(api, name)
    raise AttributeError(f"module 'kclassify' has no attribute {name!r}")


class _AfterKerasImport(importlib.abc.MetaPathFinder):
    """Runs register_custom_objects() right after the `keras` package finishes importing.

    It stays in sys.meta_path until keras is really executed: TensorFlow probes
    `importlib.util.find_spec("keras")` without importing it, and that probe must not use it up.
    """

    def find_spec(self, name, path=None, target=None):
        if name != "keras":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module
        finder = self

        def exec_then_register(module):
            exec_module(module)
            if finder in sys.meta_path:
                sys.meta_path.remove(finder)
            register_custom_objects()

        spec.loader.exec_module = exec_then_register
        return spec


if "keras" in sys.modules:
    register_custom_objects()
elif not any(isinstance(f, _AfterKerasImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _AfterKerasImport())
