"""Every module defining a Keras object registered with package="kclassify" (for .keras loading).

Called right after `keras` is imported. When a kclassify module itself triggered that import it
is only half initialized now; it registers its own classes as it finishes, so it is skipped here
(importing it again would fail on names it has not defined yet)."""
import importlib
import sys

MODULES = ("kclassify.layers", "kclassify.train.schedules", "kclassify.train.optim", "kclassify.train.distill")

for _name in MODULES:
    if _name not in sys.modules:
        importlib.import_module(_name)
