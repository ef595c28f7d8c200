"""``experiments.search_exhaustive`` on a tiny space with known scores: the exhaustive best is the brute-force
best, every search reads the scores it was given, and the summary counts what was searched."""

from __future__ import annotations

import random
from types import SimpleNamespace

from focusformer_fast.experiments.search_exhaustive import every_arch, markdown, run_searches, space_size
from focusformer_fast.nas.costs import budget_grid
from focusformer_fast.nas.sampler.factory import make_sampler
from focusformer_fast.space import SearchSpace

TINY = SearchSpace("tiny", (8, 16, 24), (1.0, 2.0, 3.0), (1, 2), (1, 2, 3), image_size=4, patch_size=2, in_chans=1,
                   num_classes=3, head_dim=4)


def flops(arch):
    return float(TINY.flops(arch))


def test_searches_are_measured_against_the_brute_force_best_on_and_off_the_grid():
    archs = every_arch(TINY)
    assert len(archs) == len(set(archs)) == space_size(TINY) == 774
    scores = {a: (random.Random(str(a)).random(), 0.0, random.Random(f"t{a}").random(), flops(a)) for a in archs}
    grid = budget_grid(TINY, flops, 3)
    trained = SimpleNamespace(space=TINY, cost_fn=flops, config=SimpleNamespace(budgets=grid),
                              sampler=make_sampler("focus", TINY, flops, grid, seed=0))
    results = run_searches(trained, scores, [5, 20], seeds=2)
    assert [r["on_grid"] for r in results] == [False, True, False, True, False, True]
    for r in results:
        fit = [a for a in archs if flops(a) <= r["budget"]]
        best = max(fit, key=lambda a: scores[a][0])
        assert r["in_budget"] == len(fit) and r["best_arch"] == str(best) and r["best_val"] == scores[best][0]
        assert len(r["searches"]) == 2 * 4 * 2
        for x in r["searches"]:
            assert x["evaluations"] == min(x["n"], len(fit)) and x["val"] <= r["best_val"]
            chosen = next(a for a in fit if str(a) == x["arch"])
            assert (x["val"], x["test"]) == (scores[chosen][0], scores[chosen][2])
    md = markdown({"run": "r", "step": 1, "archs": 774, "evaluations": [5, 20], "seeds": 2, "results": results})
    rows = [ln for ln in md.splitlines() if ln.startswith("| 20 |")]
    assert [ln.split(" | ")[1] for ln in rows] == ["policy", "evolution", "evolution+policy", "random"]
