"""Within a level, a trial transform that loses more than half of the level's starting overlap
is refused (loss 0, as below MIN_OVERLAP): MI of a few samples is biased upwards and must not
win against MI of many (a slab's coarsest level once jumped from 68 % to 5 % overlap)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from miregister import read_image
from miregister.registration import optimize
from miregister.registration.levels import LevelCache
from miregister.registration.objective import level_problem
from miregister.registration.options import build_options
from miregister.transforms import Translation


@pytest.fixture(scope="module")
def problem():
    fixed = read_image("data/mni152_t1_2mm.nii.gz")
    moving = read_image("data/mni152_t2like_moved_2mm.nii.gz")
    opts = build_options(["translation"])
    level = LevelCache(fixed, moving, None, None).get(4, 2.0)
    made, _ = level_problem(level, opts.stage("translation"), opts, seed=0, last_level=False)
    return made


def _shifted(mm: float, axis: int = 0) -> Translation:
    t = Translation(3, dtype=torch.float32)
    with torch.no_grad():
        t.translation[0, axis] = mm
    return t


def test_loss_refuses_transforms_below_the_floor_and_records_the_overlap(problem):
    start = problem.loss(_shifted(0.0)).detach()
    start_overlap = problem.last_overlap
    far = _shifted(150.0)  # most samples leave the moving image
    with torch.no_grad():
        value, overlap = problem.metric(far, check_overlap=False)
    assert optimize.MIN_OVERLAP < float(overlap) < optimize.OVERLAP_KEEP * start_overlap
    assert float(problem.loss(far).detach()) == pytest.approx(-float(value[0]))  # the default floor: MIN_OVERLAP
    problem.overlap_floor = optimize.OVERLAP_KEEP * start_overlap
    try:
        refused = problem.loss(far)
        assert float(refused.detach()) == 0.0 and problem.last_overlap == pytest.approx(float(overlap))
        assert float(problem.loss(_shifted(0.0)).detach()) == pytest.approx(float(start))  # above the floor: unchanged
    finally:
        problem.overlap_floor = optimize.MIN_OVERLAP


def test_optimize_level_sets_the_floor_from_its_start_and_resets_it(problem, monkeypatch):
    floors = []
    real_loss = type(problem).loss

    def spy(self, transform):
        floors.append(self.overlap_floor)
        return real_loss(self, transform)

    monkeypatch.setattr(type(problem), "loss", spy)
    transform = _shifted(6.0, axis=1)
    optimize.optimize_level(transform, problem, iterations=5)
    with torch.no_grad():
        _, start_overlap = problem.metric(_shifted(6.0, axis=1), check_overlap=False)
    assert floors[0] == optimize.MIN_OVERLAP  # the start itself is judged by the absolute rule
    assert all(f == pytest.approx(optimize.OVERLAP_KEEP * float(start_overlap), rel=1e-6) for f in floors[1:]) and len(floors) > 1
    assert problem.overlap_floor == optimize.MIN_OVERLAP  # reset for the next user of the problem
    assert np.isfinite(problem.last_overlap)
