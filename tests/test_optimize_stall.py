"""L-BFGS stops once the metric no longer improves beyond its float rounding, at the best point."""
from __future__ import annotations

import torch

from miregister.registration import optimize
from miregister.registration.optimize import STALL_EVALUATIONS, _Stall


def test_stall_counts_only_gains_above_the_rounding_and_restores_the_best():
    x = torch.zeros(3, requires_grad=True)
    stall = _Stall([x])
    eps = torch.finfo(torch.float32).eps
    values = [0.5, 0.9, 1.2]  # real gains
    for k, value in enumerate(values):
        with torch.no_grad():
            x.fill_(float(k))
        assert not stall.update(value, torch.float32)
    best = x.detach().clone()
    # gains within a few float32 steps of 1.2, and losses: not progress
    stalled = [1.2 + 2 * eps, 1.2 - 1e-3, 1.2 + 4 * eps, 1.2]
    for k, value in enumerate(stalled):
        with torch.no_grad():
            x.fill_(10.0 + k)
        stop = stall.update(value, torch.float32)
        assert stop == (k + 1 >= STALL_EVALUATIONS)
    stall.restore()
    # the best value seen was 1.2 + 4 eps, evaluated at x = 12: the restore puts that point back
    assert torch.equal(x.detach(), torch.full((3,), 12.0)) and not torch.equal(x.detach(), best)
    # a real gain (well above float64's rounding) resets the count in float64
    stall64 = _Stall([x])
    for value in (1.0, 1.0 + 1e-9, 1.0 + 2e-9):
        assert not stall64.update(value, torch.float64)


def test_optimize_level_ends_a_flat_tail_early(monkeypatch):
    """A flat-bottomed (quartic) bowl whose value is rounded to float32, as the metric is: the
    value stops changing long before the parameters do. With the stall rule the level ends
    STALL_EVALUATIONS evaluations after the last gain, at the same point as without it, in
    fewer evaluations."""
    target = torch.tensor([0.3, -0.2], dtype=torch.float64)

    class Problem:
        radius = 1.0
        overlap_floor = optimize.MIN_OVERLAP
        last_overlap = 1.0  # all samples inside: the overlap floor never refuses a step

        def loss(self, transform):
            d = transform.shift - target
            value = 1.0 - d.square().sum().square() - 0.5 * (d[0] * d[1]).square()
            return -value.to(torch.float32)

    class Shift(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.shift = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))

    def run():
        transform = Shift()
        history = optimize.optimize_level(transform, Problem(), iterations=200)
        return transform.shift.detach().clone(), history

    found, history = run()
    monkeypatch.setattr(optimize, "STALL_EVALUATIONS", 10**6)  # torch's own stopping rule only
    found_without, history_without = run()
    rounding = optimize.STALL_ULPS * torch.finfo(torch.float32).eps
    gains = [i for i in range(1, len(history)) if history[i] > max(history[:i]) + rounding]
    assert len(history) == gains[-1] + 1 + STALL_EVALUATIONS
    assert len(history) < len(history_without)
    assert max(history) == max(history_without)  # the same best value ...
    assert float((found - found_without).abs().max()) < 1e-3  # ... at (nearly) the same point
    assert float((found - target).abs().max()) < 0.05  # a quartic's float32 plateau is wide
