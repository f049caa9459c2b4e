"""Generator plumbing: run one to its end, or pass on what it yields transformed."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any


def _run_to_end(gen: Generator) -> Any:
    """Run a generator to its end and return its return value."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def _mapped(gen: Generator, fn: Callable[[Any], Any]) -> Generator:
    """``gen`` with ``fn`` applied to what it yields; returns what it returns."""
    while True:
        try:
            item = next(gen)
        except StopIteration as stop:
            return stop.value
        yield fn(item)
