"""Old import paths of the training application, kept working for one release.

bnn 0.3.0 moved the training application out of the plugin into `bnn_keras.training`
(`bnn_keras.data` is now `bnn_keras.training.data`, and so on). Code written for 0.2 that
imports the old paths gets the new module, the same object, with a DeprecationWarning.
"""

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

# Old module name -> new module name.
MOVED_MODULES = {
    f"bnn_keras.{name}": f"bnn_keras.training.{name}"
    for name in ("data", "recipes", "tricks", "distribute", "precision", "baselines",
                 "run_lock", "signals")
}


def import_moved(old_name: str):
    """Imports the module that replaced `old_name`, warning once per call site."""
    new_name = MOVED_MODULES[old_name]
    warnings.warn(f"{old_name} moved to {new_name} in bnn 0.3.0; import {new_name}",
                  DeprecationWarning, stacklevel=3)
    return importlib.import_module(new_name)


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves `import bnn_keras.data` (and the other moved names) to the new module."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED_MODULES:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return import_moved(spec.name)  # the new module object itself, not a copy

    def exec_module(self, module):
        pass  # already executed under its new name


def install() -> None:
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
