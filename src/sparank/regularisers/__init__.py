"""Regularisers by name (PROTOCOL §5): ``get(name, strength)`` builds one.

Each family lives in its own module (``sparse``, ``lowrank``, ``adversarial``)
and lists its classes in ``METHODS``; the registry is their union, in order.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from sparank.regularisers import adversarial, lowrank, sparse
from sparank.regularisers.base import L2, Dense, Regulariser, check_strength, counterpart

REGISTRY: dict[str, type[Regulariser]] = {
    cls.name: cls for cls in (Dense, L2, *sparse.METHODS, *lowrank.METHODS, *adversarial.METHODS)
}


def get(name: str, strength: float | None = None, *, layers: Sequence[str] | None = None, **options: Any) -> Regulariser:
    """The regulariser registered as ``name`` at ``strength``; ValueError names the known ones."""
    try:
        cls = REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown regulariser {name!r}; choose from {', '.join(REGISTRY)} (see `sparank regularisers`)") from None
    params = inspect.signature(cls).parameters.values()
    known = [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name != "layers"]
    unknown = sorted(set(options) - set(known))
    if unknown and not any(p.kind is p.VAR_KEYWORD for p in params):
        raise ValueError(f"unknown option(s) {unknown} for regulariser {name!r}; it takes {known or 'no options'}")
    return cls(strength, layers=layers, **options)


__all__ = ["L2", "REGISTRY", "Dense", "Regulariser", "check_strength", "counterpart", "get"]
