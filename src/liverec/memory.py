"""Building large folds in memory."""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many objects that hold no reference
    cycles (restoring snapshots): otherwise it walks the growing heap again and again (on ML-1M
    the user states take 0.8 s to build with it paused, 2.1 to 2.8 s without).

    >>> with collector_paused():
    ...     gc.isenabled()
    False
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
