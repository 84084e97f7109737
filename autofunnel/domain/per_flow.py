"""A value worked out once per loaded flow object.

A flow is frozen once loaded, yet every subscription, event batch and scheduler
pass asks the same questions of it (its version's digest, what its steps look
at). Keyed by the object itself, not by its contents: hashing a whole flow would
cost what the answer saves. The object is kept beside its value, so its `id`
cannot be reused by another flow while the entry stands.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from autofunnel.domain.model import Flow

T = TypeVar("T")

KEPT = 256
"""Entries kept before all are forgotten: only a process reloading its flows again and again gets there."""


class PerFlow(Generic[T]):
    """`compute(flow)`, remembered for as long as that flow object is in use."""

    def __init__(self, compute: Callable[[Flow], T]) -> None:
        self._compute = compute
        self._known: dict[int, tuple[Flow, T]] = {}

    def __call__(self, flow: Flow) -> T:
        known = self._known.get(id(flow))
        if known is None or known[0] is not flow:
            if len(self._known) >= KEPT:
                self._known.clear()
            known = self._known[id(flow)] = (flow, self._compute(flow))
        return known[1]
