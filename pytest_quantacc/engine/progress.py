"""Progress of a long evaluation, told to whoever called the engine.

Converting and evaluating a 300-layer model takes tens of seconds, a remedy search minutes; without a word
the user cannot tell a slow model from a hung run. The engine stays free of pytest: it calls a plain callback
(the pytest plugin prints through pytest's terminal reporter; a script may pass ``print``-like code or None).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# Called with a phase's label when it starts (seconds None) and again with its duration when it ends.
Progress = Callable[[str, float | None], None]


@contextmanager
def timed(progress: Progress | None, label: str) -> Iterator[None]:
    """Report ``label`` to ``progress`` at the start and, with its duration, at the end (also when it raises)."""
    if progress is None:
        yield
        return
    progress(label, None)
    t0 = time.perf_counter()
    try:
        yield
    finally:
        progress(label, time.perf_counter() - t0)
