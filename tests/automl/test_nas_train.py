"""Progressive shrinking: the phase schedule opens one dimension at a time, and training
makes sub-networks of every size accurate."""

from __future__ import annotations

import pytest
import torch

from mobiledl.automl.nas.elastic import OFASupernet
from mobiledl.automl.nas.evaluate import EvalSpec, LocalEvaluator
from mobiledl.automl.nas.space import SearchSpace, default_space
from mobiledl.automl.nas.train import ShrinkConfig, phases, progressive_shrink
from mobiledl.errors import UserError


def test_phases_open_kernel_then_depth_then_expand():
    space = default_space()
    plan = phases(
        space, ShrinkConfig(full_epochs=2, kernel_epochs=1, depth_epochs=2, expand_epochs=2)
    )
    assert [p.name for p in plan] == [
        "full",
        "kernel",
        "depth-1",
        "depth-2",
        "expand-1",
        "expand-2",
    ]
    assert plan[0].space.kernel_sizes == (7,) and plan[0].space.depths == (4,)
    assert plan[1].space.kernel_sizes == (3, 5, 7) and plan[1].space.depths == (4,)
    assert plan[2].space.depths == (3, 4) and plan[3].space.depths == (2, 3, 4)
    assert plan[3].space.expand_ratios == (6,)
    assert plan[4].space.expand_ratios == (4, 6) and plan[5].space == space
    assert [p.sort_first for p in plan] == [False] * 4 + [True] * 2
    with pytest.raises(UserError):
        ShrinkConfig(full_epochs=-1)


def test_progressive_shrinking_trains_every_size(space: SearchSpace, small_task):
    torch.manual_seed(0)
    supernet = OFASupernet(space, 10, 1, (8, 8))
    evaluate = LocalEvaluator(supernet, small_task, EvalSpec(split="train"))
    archs = [space.largest(), space.smallest()]
    before = evaluate(archs)
    config = ShrinkConfig(
        full_epochs=4,
        kernel_epochs=1,
        depth_epochs=2,
        expand_epochs=2,
        batch_size=64,
        lr=0.1,
        shrink_lr=0.05,
        progress=False,
    )
    history = progressive_shrink(supernet, small_task, config).history
    after = evaluate(archs)
    assert {h["phase"] for h in history} == {
        "full",
        "kernel",
        "depth-1",
        "depth-2",
        "expand-1",
        "expand-2",
    }
    assert all(a > 0.5 for a in after), after
    assert all(a > b + 0.2 for a, b in zip(after, before, strict=True))
