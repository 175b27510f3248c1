"""Old names kept for one release: a module's ``__getattr__`` that still answers them,
with a :class:`DeprecationWarning` saying where each lives now (PEP 562)."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["deprecated_names", "warn_renamed"]


def warn_renamed(old: str, new: str) -> None:
    """Warn the caller of the caller that ``old`` is now called ``new``."""
    warnings.warn(
        f"{old} is deprecated and goes in the next release: use {new}",
        DeprecationWarning,
        stacklevel=3,
    )


def deprecated_names(
    module: str, moved: Mapping[str, tuple[str, str]]
) -> Callable[[str], Any]:
    """A ``__getattr__`` for ``module``: each old name of ``moved`` maps to (the module that
    holds it now, its name there), imported only when asked for."""

    def __getattr__(name: str) -> Any:
        try:
            home, new_name = moved[name]
        except KeyError:
            raise AttributeError(f"module {module!r} has no attribute {name!r}") from None
        spelled = new_name if new_name == name else f"{new_name} (renamed from {name})"
        warnings.warn(
            f"{module}.{name} is deprecated and goes in the next release: "
            f"use {spelled} from {home}",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(home), new_name)

    return __getattr__
