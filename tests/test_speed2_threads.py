"""The thread rule of a registration: the optimisation on one thread, the rest on ``threads``."""
from __future__ import annotations

import importlib

import torch

import miregister
from miregister.threads import OPTIMISATION_THREADS

from registration_cases import slice_case

register_module = importlib.import_module("miregister.registration.register")
stages_module = importlib.import_module("miregister.registration.stages")


def test_optimisation_runs_on_one_thread_and_validation_on_the_users(monkeypatch):
    seen: dict[str, list[int]] = {"optimise": [], "flip": [], "validate": []}

    def spy(module, name, key):
        original = getattr(module, name)

        def wrapper(*args, **kwargs):
            seen[key].append(torch.get_num_threads())
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    spy(stages_module, "optimize_level", "optimise")
    spy(register_module, "final_flip_check", "flip")
    spy(register_module, "validate", "validate")
    fixed, moving, _, _ = slice_case()
    before = torch.get_num_threads()
    wanted = 2 if before != 2 else 3
    result = miregister.register(fixed, moving, transform="affine", iterations=(10, 5), shrink_factors=(2, 1),
                                 device="cpu", threads=wanted)
    assert seen["optimise"] and set(seen["optimise"]) == {OPTIMISATION_THREADS}
    assert seen["flip"] == [OPTIMISATION_THREADS]
    assert seen["validate"] == [wanted]
    assert result.report()["threads"] == wanted
    assert torch.get_num_threads() == before


def test_large_dense_levels_of_a_deformable_stage_use_the_users_threads(monkeypatch):
    import miregister.threads as threads_module

    seen: list[tuple[bool, int]] = []
    original = stages_module.optimize_level

    def wrapper(transform, problem, *args, **kwargs):
        seen.append((problem.dense is not None, torch.get_num_threads()))
        return original(transform, problem, *args, **kwargs)

    monkeypatch.setattr(stages_module, "optimize_level", wrapper)
    fixed, moving, _, _ = slice_case()
    size = miregister.Image.from_sitk(fixed).grid.numel
    # the finest level (the whole slice) counts as large, the coarser one (a quarter) does not
    monkeypatch.setattr(threads_module, "DENSE_PARALLEL_VOXELS", size // 2)
    wanted = 2 if torch.get_num_threads() != 2 else 3
    miregister.register(fixed, moving, transform="affine+bspline", iterations=(5, 3), shrink_factors=(2, 1),
                        device="cpu", threads=wanted)
    linear = [n for dense, n in seen if not dense]
    deformable = [n for dense, n in seen if dense]
    assert set(linear) == {OPTIMISATION_THREADS}
    assert deformable == [OPTIMISATION_THREADS, wanted]  # coarse level one thread, finest the user's
