"""scope=sensitivity: the removal budget moves from sensitive groups to robust ones."""

from __future__ import annotations

import numpy as np

import onnxpress
from onnxpress.backends.ort import OrtRunner
from onnxpress.passes.pruning.sensitivity import allocate_ratios
from tests.passes.pruning._models import conv_chain
from tests.util import random_feeds


class _G:
    def __init__(self, index: int, n: int) -> None:
        self.index, self.prunable = index, list(range(n))


def test_allocation_keeps_the_budget_and_favours_robust_groups():
    groups = [_G(0, 16), _G(1, 16), _G(2, 32)]
    ratios = allocate_ratios(groups, {0: 1.0, 1: 0.01, 2: 0.1}, ratio=0.25, max_layer_ratio=0.8)
    removed = sum(ratios[g.index] * len(g.prunable) for g in groups)
    assert abs(removed - 0.25 * 64) < 1e-6
    assert ratios[1] > ratios[2] > ratios[0]
    assert max(ratios.values()) <= 0.8


def _error(model, reference_model, feeds) -> float:
    runner = OrtRunner()
    ref = [next(iter(o.values())) for o in runner.run(reference_model, feeds)]
    got = [next(iter(o.values())) for o in runner.run(model, feeds)]
    return float(np.linalg.norm(np.concatenate(got) - np.concatenate(ref)) / np.linalg.norm(np.concatenate(ref)))


def test_sensitivity_beats_uniform_when_groups_differ():
    # conv1: every channel carries signal; conv2: half its channels are nearly dead.
    s2 = np.concatenate([np.ones(8), np.full(8, 1e-3)]).astype(np.float32)
    model = conv_chain((16, 16), seed=4, scale=[np.ones(16, np.float32), s2])
    feeds = random_feeds(model, n=6, seed=1)
    errors, removed = {}, {}
    for scope in ("uniform", "sensitivity"):
        result = onnxpress.optimize(model, f"prune-channels{{ratio=0.25 scope={scope}}}", data=feeds, verify="none")
        errors[scope] = _error(result.model, model, feeds)
        stats = [p for p in result.report.passes if p["name"] == "prune-channels"][0]["stats"]
        removed[scope] = stats["channels_removed"]
    assert removed["sensitivity"] >= removed["uniform"] - 1
    assert errors["sensitivity"] < 0.5 * errors["uniform"], errors
