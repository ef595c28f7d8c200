"""``run_loop.frozen_heap``: what the training loops of ``train`` and ``finetune`` run inside."""

from __future__ import annotations

import gc
import weakref

from focusformer_fast.training.run_loop import frozen_heap


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_objects_made_before_are_frozen_inside_and_collectable_after():
    made_before = [_Node() for _ in range(1000)]
    cycle = _Node()
    cycle.other = _Node()
    cycle.other.other = cycle  # collectable only by the cyclic collector
    alive = weakref.ref(cycle)
    del cycle
    with frozen_heap():
        assert gc.get_freeze_count() >= len(made_before)
        gc.collect()
        assert alive() is None  # garbage before the loop was collected before freezing
        late = _Node()
        late.other = _Node()
        late.other.other = late
        late_ref = weakref.ref(late)
        del late
        gc.collect()
        assert late_ref() is None  # the loop's own cycles are still collected
        frozen_cycle = made_before[0]
        frozen_cycle.other = made_before[1]
        made_before[1].other = frozen_cycle
        frozen_ref = weakref.ref(frozen_cycle)
        del frozen_cycle, made_before[:2]
        gc.collect()
        assert frozen_ref() is not None  # frozen: the collector does not scan it
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert frozen_ref() is None  # unfrozen after the loop: nothing leaks
