"""The CUDA path gives the CPU's answers (skipped where no CUDA device is present).

Run on a GPU machine with ``python -m pytest tests/test_cuda.py -q``; see benchmarks/device_check.sh.
"""
from __future__ import annotations

import pytest
import torch

from miregister import mi
from miregister.cubic import bspline_prefilter, bspline_sample
from miregister.registration import register

from registration_cases import mapping_error, slice_case

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def test_soft_mi_and_gradient_match_cpu():
    torch.manual_seed(0)
    x = torch.randn(3, 20_000, dtype=torch.float64)
    y = 0.7 * x + 0.5 * torch.randn_like(x)
    values, grads = [], []
    for device in ("cpu", "cuda"):
        xd = x.to(device).requires_grad_(True)
        value = mi.soft_mutual_information(xd, y.to(device), bins=32)
        (grad,) = torch.autograd.grad(value.sum(), xd)
        values.append(value.cpu())
        grads.append(grad.cpu())
    torch.testing.assert_close(values[1], values[0], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-7, atol=1e-12)


def test_knn_and_kde_match_cpu():
    torch.manual_seed(1)
    x = torch.randn(2, 3000, dtype=torch.float64)
    y = x + torch.randn_like(x)
    for estimator in (mi.knn_mutual_information, mi.kde_mutual_information):
        torch.testing.assert_close(estimator(x.cuda(), y.cuda()).cpu(), estimator(x, y), rtol=1e-6, atol=1e-9)


def test_cubic_sampler_matches_cpu():
    torch.manual_seed(2)
    image = torch.randn(1, 2, 20, 21, 22, dtype=torch.float64)
    index = (torch.rand(1, 5000, 3, dtype=torch.float64) * 20).requires_grad_(True)
    out = []
    for device in ("cpu", "cuda"):
        i = index.detach().to(device).requires_grad_(True)
        value = bspline_sample(bspline_prefilter(image.to(device)), i)
        (grad,) = torch.autograd.grad(value.sum(), i)
        out.append((value.cpu(), grad.cpu()))
    torch.testing.assert_close(out[1][0], out[0][0])
    torch.testing.assert_close(out[1][1], out[0][1])


def test_affine_registration_on_cuda_recovers_known_transform_as_cpu_does():
    fixed, moving, truth, points = slice_case()
    found = {}
    for device in ("cpu", "cuda"):
        result = register(fixed, moving, "affine", device=device, knn_samples=2000)
        transform = result.transform.to("cpu")

        def apply(p, transform=transform):
            with torch.no_grad():
                return transform(torch.as_tensor(p, dtype=torch.float32)[None])[0].double().numpy()

        found[device] = apply
        assert mapping_error(apply, truth, points) < 0.3, device
    # same algorithm, same seed: the two devices land within float32 noise of each other
    difference = abs(found["cuda"](points) - found["cpu"](points)).max()
    assert difference < 0.05, f"CPU and CUDA results differ by {difference:.3f} mm"
