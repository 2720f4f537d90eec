"""Package attributes imported from their modules on first use (PEP 562).

A package that re-exports its API eagerly imports everything behind it: `import convert` would
load LCE's converter and `import bnn_keras.training` the data sets. With `lazy_exports` the
package names each public attribute's module, and the module is imported when the attribute is
first read.
"""

import importlib
from typing import Any, Callable, Dict, List, Tuple


def lazy_exports(package: str, exports: Dict[str, str],
                 namespace: Dict[str, Any]) -> Tuple[Callable[[str], Any], Callable[[], List[str]]]:
    """The module-level `__getattr__` and `__dir__` for `package`.

    Args:
        package: The package's name, for the AttributeError of an unknown name.
        exports: Public name -> the module that defines it.
        namespace: The package's `globals()`; a name read once is stored there, so later reads
            skip `__getattr__`.

    Returns:
        (`__getattr__`, `__dir__`), to assign in the package's `__init__`.
    """

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> List[str]:
        return sorted({*namespace, *exports})

    return __getattr__, __dir__
