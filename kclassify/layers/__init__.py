"""The few custom Keras layers kclassify needs, each registered with package="kclassify" so
that .keras files holding them load after `import kclassify`. Every module in this package is
imported here, so a new layer file needs no other registration."""
import importlib
import pkgutil

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")
