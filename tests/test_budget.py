"""FLOP counting convention and the budget plan."""
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from effrecipes.algorithms import progressive_resizing_cost_factor
from effrecipes.budget import count_flops, plan_budget, train_step_flops
from effrecipes.models import build_model


def test_conv_forward_flops_equal_hand_formula() -> None:
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    x = torch.zeros(4, 3, 16, 16)
    # 2 FLOPs per multiply-add: N * C_out * H_out * W_out * (C_in * k * k) * 2
    expected = 4 * 8 * 16 * 16 * (3 * 3 * 3) * 2
    assert count_flops(lambda: conv(x)) == expected


def test_conv_train_step_is_three_times_forward_when_input_needs_grad() -> None:
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    fwd = 2 * 8 * 16 * 16 * 27 * 2
    x = torch.zeros(2, 3, 16, 16, requires_grad=True)

    def step() -> None:
        conv(x).sum().backward()

    assert count_flops(step) == 3 * fwd  # forward + grad wrt input + grad wrt weight


def test_first_layer_backward_skips_input_grad() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3, bias=False))
    fwd = count_flops(lambda: model(torch.zeros(1, 1, 8, 8)))
    step = train_step_flops(model, lambda o, y: o.sum(), (torch.zeros(1, 1, 8, 8), None))
    assert step == 2 * fwd  # data needs no gradient: only the weight gradient


def test_sam_declares_the_passes_a_real_sam_step_runs() -> None:
    """SAM's cost declaration (2 passes on the steps that run SAM, 1 on the others) matches
    Composer's SAMOptimizer stepping a real model under the counter."""
    from composer.algorithms.sam import SAMOptimizer

    from effrecipes.algorithms import ResumableSAM, info

    model = build_model("gap_1p5k_dw", 1, 10, 28)
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    loss = nn.functional.cross_entropy
    one = train_step_flops(model, loss, (x, y))
    opt = SAMOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.05, interval=2)

    def closure(**_: object) -> torch.Tensor:
        opt.zero_grad()
        out = loss(model(x), y)
        out.backward()
        return out

    algo, state = ResumableSAM(rho=0.05, interval=2), SimpleNamespace(optimizers=[opt])
    keys, steps = [], []
    for _ in range(4):
        keys.append(algo.step_cost_key(state))  # type: ignore[arg-type]  # named before the step
        steps.append(count_flops(lambda: opt.step(closure)))
    cost = info("sam").cost({"interval": 2})
    assert max(steps) == pytest.approx(cost.max_passes * one, rel=1e-6)
    assert sum(steps) / len(steps) == pytest.approx(cost.passes * one, rel=1e-6)
    assert cost.keyed and not cost.varies and cost.may_grow
    # the name says which steps run the second pass: the budget caches one cost per name
    assert [k == " 2 passes" for k in keys] == [s > 1.5 * one for s in steps] == [False, True] * 2


def test_plan_binding_cap_is_the_smallest() -> None:
    plan = plan_budget(flops_cap=1e15, max_epochs=2, max_seconds=None, pass_flops=1e6,
                       forward_flops_per_sample=3e3, fvcore_macs=None,
                       global_batch_size=100, batches_per_epoch=30)
    assert plan.planned_batches == 60 and plan.binding_cap == "max_epochs"
    plan = plan_budget(flops_cap=1e9, max_epochs=None, max_seconds=None, pass_flops=1e6,
                       forward_flops_per_sample=3e3, fvcore_macs=None,
                       global_batch_size=100, batches_per_epoch=30)
    assert plan.planned_batches == 1000 and plan.binding_cap == "flops"


def test_plan_bounds_the_dearest_step_and_expects_the_mean() -> None:
    """SAM every 2nd step with selective backprop's scoring pass: the stop rule's bound is the
    dearest step (2 passes + a forward over the batch), the plan expects the mean."""
    from effrecipes.budget import AlgoCost

    cost = AlgoCost.combine([AlgoCost(passes=1.5, max_passes=2.0, varies=True),
                             AlgoCost(mean_factor=0.5, scoring_forwards=1.0)])
    plan = plan_budget(flops_cap=1e9, max_epochs=None, max_seconds=None, pass_flops=1e6,
                       forward_flops_per_sample=3e3, fvcore_macs=None, global_batch_size=100,
                       batches_per_epoch=30, cost=cost)
    assert plan.step_flops == 2e6 + 3e5
    assert plan.mean_step_flops == 1e6 * 1.5 * 0.5 + 3e5
    assert plan.planned_batches == int(1e9 // plan.mean_step_flops) and cost.varies


def test_progressive_resizing_cost_factor() -> None:
    assert progressive_resizing_cost_factor(initial_scale=1.0) == pytest.approx(1.0)
    f = progressive_resizing_cost_factor(initial_scale=0.5, delay_fraction=0.5, finetune_fraction=0.2)
    assert f == pytest.approx(0.5 * 0.25 + 0.3 * (0.25 + 0.5 + 1) / 3 + 0.2)
    assert 0 < f < 1 and not math.isnan(f)


@pytest.mark.parametrize("groups", [1, 4, 32])
def test_grouped_conv_step_is_three_forwards(groups: int) -> None:
    """torch's FlopCounterMode counts a depthwise conv's weight gradient `groups` times over;
    our counter does not: one step is forward + grad input + grad weight = 3 x forward."""
    conv = nn.Conv2d(32, 32, 3, padding=1, groups=groups, bias=False)
    x = torch.randn(2, 32, 14, 14, requires_grad=True)
    fwd = count_flops(lambda: conv(x))
    assert fwd == 2 * 2 * 32 * 14 * 14 * (32 // groups) * 9

    def step() -> None:
        conv(x).sum().backward()

    assert count_flops(step) == 3 * fwd
