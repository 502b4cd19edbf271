"""Optional dependencies: parts most users do not need live in pip extras (pyproject.toml).

`require("matplotlib", "plot", "aware align-plot")` imports the module, or stops with one line that
names the extra to install, instead of an ImportError traceback deep inside a command.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from aware_cli.errors import AwareError


class MissingExtra(AwareError):
    """An optional dependency is not installed (exit code 2, one line)."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import `module` or raise MissingExtra naming `pip install 'aware-cli[extra]'`."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(f"{purpose} needs the optional package '{module.split('.')[0]}': "
                           f"pip install 'aware-cli[{extra}]'") from exc
