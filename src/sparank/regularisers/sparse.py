"""Regularisers of the sparse family (PROTOCOL §5). Filled in by issue 3."""

from __future__ import annotations

from sparank.regularisers.base import Regulariser

#: the classes this module registers, in the order `sparank regularisers` lists them
METHODS: tuple[type[Regulariser], ...] = ()
