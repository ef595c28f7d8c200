"""The record of scored subnets (``nas.sampler.scored_record``): it keeps the newest entries, weighs them by
age, and round-trips through its state."""

from __future__ import annotations


import pytest

from _toy_sampler import distinct
from focusformer_fast.nas.sampler.scored_record import Scored, ScoredRecord
from focusformer_fast.space import SearchSpace

pytestmark = pytest.mark.usefixtures("one_thread")


SPACE = SearchSpace.preset("digits")


def test_record_keeps_the_newest_and_weighs_by_age():
    rec = ScoredRecord(capacity=3, half_life=10)
    archs = distinct(5, 0)
    rec.add(Scored(a, 1e6, float(i), 0.5, step=10 * i) for i, a in enumerate(archs))
    assert [e.arch for e in rec] == archs[2:]
    assert rec.weights(now=40) == pytest.approx([0.5 ** 2, 0.5 ** 1, 1.0])
    back = ScoredRecord()
    back.load_state_dict(rec.state_dict())
    assert list(back) == list(rec) and back.capacity == 3 and back.weights(40) == rec.weights(40)
