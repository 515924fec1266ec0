"""Named implementations of one kind (reward strategies, policy algorithms, conditioning
strategies): one table feeds both the lookup and the config's validation.

Built-in entries are known by name without importing them (a module of a package, or names that
one module registers when imported), so validating a config stays cheap; ``get`` imports on
first use. ``register`` adds an entry at run time, and the config accepts its name from then on.
"""

from __future__ import annotations

import pkgutil
from collections.abc import Callable, Iterable
from importlib import import_module
from typing import Annotated, Generic, TypeVar

from pydantic import AfterValidator

from rlhf_persona.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """``name → implementation`` of one kind.

    Args:
        kind: what an entry is, for messages ("reward strategy").
        package: every public module of this package is a built-in entry named after it; the
            module registers itself when ``get`` imports it.
        builtin: names that ``module`` registers when imported.
        module: imported on the first lookup of a built-in name.
    """

    def __init__(self, kind: str, *, package: str | None = None, builtin: Iterable[str] = (),
                 module: str | None = None):  # fmt: skip
        self.kind = kind
        self._package = package
        self._builtin = tuple(builtin)
        self._module = module
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """``register(name, obj)``, or ``@register(name)`` as a decorator."""

        def add(item: T) -> T:
            self._items[name] = item
            return item

        return add if obj is None else add(obj)

    def unregister(self, name: str) -> None:
        self._items.pop(name, None)

    def names(self) -> list[str]:
        return sorted({*self._builtin, *self._package_modules(), *self._items})

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def get(self, name: str) -> T:
        if name not in self._items:
            if name in self._package_modules():
                import_module(f"{self._package}.{name}")
            elif name in self._builtin and self._module:
                import_module(self._module)
        if name not in self._items:
            raise UserError(self.unknown(name))
        return self._items[name]

    __getitem__ = get  # reads like the dicts these tables used to be

    def items(self) -> dict[str, T]:
        return {name: self.get(name) for name in self.names()}

    def unknown(self, name: object) -> str:
        return f"unknown {self.kind} {name!r} (registered: {', '.join(self.names())})"

    def check(self, name: str) -> str:
        """Pydantic validator: the name of a registered entry."""
        if name not in self:
            raise ValueError(self.unknown(name))
        return name

    def _package_modules(self) -> list[str]:
        if self._package is None:
            return []
        path = import_module(self._package).__path__
        return [m.name for m in pkgutil.iter_modules(path) if not m.name.startswith("_")]


def registered_name(where: str):
    """A config field type: a name registered in the ``Registry`` at ``"module:ATTRIBUTE"``,
    imported when a value is validated (the config module stays free of heavy imports)."""
    module, _, attr = where.partition(":")

    def check(name: str) -> str:
        return getattr(import_module(module), attr).check(name)

    return Annotated[str, AfterValidator(check)]
