"""The adapters of one training round and how each segment is served by them.

On disk (``root/``)::

    manifest.json          round, algorithm, strategy, base model, adapters, routes
    adapters/NAME/         a PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors)

``manifest.json`` lists every adapter with its base model, the segments whose rows trained it,
the number of rows (``data_size``), its training metrics and wall time, and maps each serving
key to a route: segment ids (as strings, JSON keys), ``"global"`` and ``"base"``. A route names
an adapter (``null`` = the base model with adapters off) and a system prompt (``null`` = none).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rlhf_persona.errors import UserError
from rlhf_persona.metadata import read_meta, stamp
from rlhf_persona.policy.strategies import Route

MANIFEST = "manifest.json"
FORMAT = "rlhf_persona.adapter_registry"
FORMAT_VERSION = 1  # manifests written before the format had a name read as this version

# Serving keys besides segment ids: the pooled-data baseline and the untouched base model.
GLOBAL = "global"
BASE = "base"


@dataclass
class AdapterInfo:
    """One trained adapter as recorded in the manifest."""

    name: str
    base_model: str
    path: str  # relative to the registry root
    segments: list[int]
    data_size: int
    metrics: dict[str, Any] = field(default_factory=dict)
    train_s: float = 0.0
    steps: int = 0


def route_key(key: int | str) -> str:
    """Normalise a serving key: segment ids (int, numpy int, "3") → "3"; "global"/"base" kept."""
    if isinstance(key, str) and key in (GLOBAL, BASE):
        return key
    try:
        return str(int(key))
    except (TypeError, ValueError):
        raise UserError(
            f"unknown policy key {key!r}: expected a segment id, 'global' or 'base'"
        ) from None


class AdapterRegistry:
    """Adapters saved per segment (+ ``global``) with a JSON manifest; see the module docstring.

    Args:
        root: folder of this registry (created on ``save``).
        base_model: the default base model spec (``models.policy``).
        round: loop round that trained these adapters.
        algorithm, strategy: how they were trained (recorded, not used for serving).
    """

    def __init__(
        self,
        root: str | Path,
        base_model: str,
        round: int = 0,
        algorithm: str | None = None,
        strategy: str | None = None,
    ):
        self.root = Path(root)
        self.base_model = base_model
        self.round = round
        self.algorithm = algorithm
        self.strategy = strategy
        self.adapters: dict[str, AdapterInfo] = {}
        self.routes: dict[str, Route] = {BASE: Route(None)}

    # -- building -------------------------------------------------------------------------
    def adapter_dir(self, name: str) -> Path:
        return self.root / "adapters" / name

    def add_adapter(self, info: AdapterInfo) -> None:
        self.adapters[info.name] = info

    def set_route(self, key: int | str, route: Route) -> None:
        if route.adapter is not None and route.adapter not in self.adapters:
            raise ValueError(f"route {key!r} names adapter {route.adapter!r}, not in the registry")
        self.routes[route_key(key)] = route

    # -- reading --------------------------------------------------------------------------
    @property
    def segments(self) -> list[int]:
        """Segment ids with a route of their own."""
        return sorted(int(k) for k in self.routes if k not in (GLOBAL, BASE))

    def route(self, key: int | str) -> Route:
        """The route serving ``key``; a segment without one (too little data, or new since this
        round) falls back to ``global``, and to ``base`` when there is no global adapter."""
        k = route_key(key)
        if k in self.routes:
            return self.routes[k]
        return self.routes.get(GLOBAL, self.routes[BASE])

    def base_model_of(self, route: Route) -> str:
        return self.adapters[route.adapter].base_model if route.adapter else self.base_model

    def adapter_path(self, name: str) -> Path:
        return self.root / self.adapters[name].path

    # -- persistence ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            **stamp(FORMAT, FORMAT_VERSION),
            "round": self.round,
            "algorithm": self.algorithm,
            "strategy": self.strategy,
            "base_model": self.base_model,
            "adapters": {name: asdict(info) for name, info in self.adapters.items()},
            "routes": {key: asdict(route) for key, route in self.routes.items()},
        }

    def save(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / MANIFEST
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False))
        tmp.replace(path)  # atomic: a crash never leaves half a manifest
        return path

    @classmethod
    def load(cls, root: str | Path) -> AdapterRegistry:
        root = Path(root)
        path = root / MANIFEST
        data = read_meta(path, "policy adapter registry", FORMAT, FORMAT_VERSION,
                         "retrain the policies", unnamed_is_current=True)  # fmt: skip
        try:
            reg = cls(
                root,
                data["base_model"],
                data["round"],
                data.get("algorithm"),
                data.get("strategy"),
            )
            for info in data["adapters"].values():
                reg.add_adapter(AdapterInfo(**info))
            for key, route in data["routes"].items():
                reg.set_route(key, Route(**route))
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{path}: malformed manifest ({exc})") from None
        return reg

    def __repr__(self) -> str:
        return (
            f"AdapterRegistry(root={str(self.root)!r}, round={self.round}, "
            f"adapters={list(self.adapters)}, segments={self.segments})"
        )
