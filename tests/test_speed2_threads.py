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
