"""kclassify: image classification on Keras 3 from recipe files.

The public API is kclassify.fit / finetune / evaluate / export / build_model (kclassify.api).
Importing kclassify is light (no TensorFlow), so a recipe is checked in milliseconds. The custom
Keras objects kclassify saves into .keras files are registered the moment Keras itself is
imported, so `import kclassify; keras.models.load_model(...)` works in any order.
"""
import importlib.abc
import importlib.machinery
import importlib.util
import sys

__version__ = "0.1.0"

API = ("fit", "finetune", "evaluate", "export", "build_model")


def _api_function(name):
    def get(module):
        import kclassify.api

        return getattr(kclassify.api, name)

    def ignore(module, value):
        """Importing the submodule kclassify.evaluate (or .export) binds it on its package; the
        API function of the same name stays what `kclassify.evaluate` means (the submodule is
        in sys.modules, where `from kclassify.evaluate import ...` finds it)."""

    return property(get, ignore)


class _Package(type(sys)):
    """The kclassify module, with the public API as lazy attributes (kclassify.api is imported
    on first use, so processes that only need part of the package, such as the QAT worker, do
    not load it)."""


for _name in API:
    setattr(_Package, _name, _api_function(_name))
sys.modules[__name__].__class__ = _Package


def register_custom_objects():
    """Import every module that registers Keras objects under package 'kclassify'."""
    import kclassify.custom_objects  # noqa: F401


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
