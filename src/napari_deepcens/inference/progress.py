"""Progress generators: long steps yield as they go (so a worker can stop them) and return
their result; these run them for callers that cannot stop, or relay their steps as progress."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any


def drain(gen: Generator) -> Any:
    """Run a generator to its end and return its value (for callers that cannot stop)."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def relay(gen: Generator, progress: Callable[[Any], Any]) -> Generator:
    """Run ``gen``, yielding ``progress(item)`` for each item it yields; return its value.
    How a step that only knows it advanced (a filter block) reports as progress."""
    while True:
        try:
            item = next(gen)
        except StopIteration as stop:
            return stop.value
        yield progress(item)
