"""The collector settings every service applies once started."""

from __future__ import annotations

import gc

from stepbus_runtime import tune_gc
from stepbus_runtime.gctune import GC_THRESHOLDS


def test_tune_gc_raises_the_thresholds_and_freezes_what_startup_loaded() -> None:
    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert GC_THRESHOLDS[0] > before[0]
        assert gc.get_freeze_count() > 1000  # modules, classes, schemas of this process
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
