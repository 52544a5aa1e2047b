"""Linear transforms and composites: parity with SimpleITK and scipy, constructors, gradients."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy.spatial.transform import Rotation

from miregister.transforms import Affine, Composite, LinearTransform, Rigid, Similarity, Translation
from miregister.transforms.io import to_sitk
from miregister.transforms.linear import rotation_matrix, rotation_parameters

CLASSES = [Translation, Rigid, Similarity, Affine]


def randomize(transform, rng: np.random.Generator, scale: float = 1.0):
    """Give every parameter of ``transform`` a random, moderately large value (in place)."""
    with torch.no_grad():
        for name, p in transform.named_parameters():
            noise = torch.as_tensor(rng.normal(size=p.shape), dtype=p.dtype)
            if name == "translation":
                p.copy_(8.0 * scale * noise)
            elif name == "rotation":
                p.copy_(0.6 * scale * noise)
            elif name == "log_scale":
                p.copy_(0.1 * scale * noise)
            elif name == "matrix":
                p.add_(0.15 * scale * noise)
    return transform


def sitk_points(tx: sitk.Transform, points: np.ndarray) -> np.ndarray:
    return np.array([tx.TransformPoint(tuple(float(v) for v in x)) for x in points])


# ---------------------------------------------------------------------- rotations
def test_rotation_matrix_matches_scipy_3d_including_tiny_and_large_angles():
    rng = np.random.default_rng(0)
    rotvec = rng.normal(size=(60, 3)) * rng.choice([0.0, 1e-7, 1e-3, 0.5, 3.0], size=(60, 1))
    expected = Rotation.from_rotvec(rotvec).as_matrix()
    got64 = rotation_matrix(torch.tensor(rotvec)).numpy()
    got32 = rotation_matrix(torch.tensor(rotvec, dtype=torch.float32)).double().numpy()
    np.testing.assert_allclose(got64, expected, atol=1e-13)
    np.testing.assert_allclose(got32, expected, atol=2e-6)
    small = np.abs(rotvec).max(1) < 2.0  # below pi: the parameters come back unchanged
    np.testing.assert_allclose(rotation_parameters(expected[small]), rotvec[small], atol=1e-10)


def test_rotation_matrix_2d_is_counter_clockwise():
    angle = torch.tensor([[np.pi / 2]], dtype=torch.float64)
    np.testing.assert_allclose(rotation_matrix(angle)[0].numpy(), [[0, -1], [1, 0]], atol=1e-15)
    assert rotation_parameters(np.array([[0.0, -1.0], [1.0, 0.0]]))[0, 0] == pytest.approx(np.pi / 2)


@pytest.mark.parametrize("rotvec", [[0.0, 0.0, 0.0], [0.3, -1.0, 2.0], [3.0, 0.5, 0.2]])
def test_rotation_matrix_gradients_are_finite_and_correct(rotvec):
    x = torch.tensor([rotvec], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(rotation_matrix, (x,))


# ---------------------------------------------------------------------- mapping and ITK parity
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("cls", CLASSES)
def test_mapping_matches_centered_formula_and_sitk(cls, ndim):
    rng = np.random.default_rng(ndim * 10 + CLASSES.index(cls))
    center = rng.normal(size=ndim) * 20.0
    t = randomize(cls(ndim, center=center, dtype=torch.float64), rng)
    points = rng.normal(size=(40, ndim)) * 50.0
    ours = t(torch.tensor(points)[None]).detach().numpy()[0]

    m = t.affine_matrix().detach().numpy()[0]
    a = m[:ndim, :ndim]
    expected = (points - center) @ a.T + center + t.translation.detach().numpy()[0]
    np.testing.assert_allclose(ours, expected, atol=1e-10)
    np.testing.assert_allclose(ours, points @ a.T + m[:ndim, ndim], atol=1e-10)
    np.testing.assert_allclose(sitk_points(to_sitk(t), points), ours, atol=1e-9)
    assert t.affine_matrix().shape == (1, ndim + 1, ndim + 1)
    assert isinstance(t, LinearTransform) and t.is_linear


def test_similarity_and_rigid_structure():
    rng = np.random.default_rng(3)
    s = randomize(Similarity(3, dtype=torch.float64), rng)
    a = s.linear_part().detach()[0]
    scale = float(torch.exp(s.log_scale.detach())[0, 0])
    np.testing.assert_allclose((a.T @ a).numpy(), scale**2 * np.eye(3), atol=1e-12)
    r = randomize(Rigid(2, dtype=torch.float64), rng)
    assert torch.linalg.det(r.linear_part()[0]).item() == pytest.approx(1.0)


def test_float32_parameters_give_float32_matrix():
    t = Affine(3)
    assert t.affine_matrix().dtype == torch.float32
    assert t.center.dtype == torch.float32 and "center" in dict(t.named_buffers())
    assert {n for n, _ in t.named_parameters()} == {"matrix", "translation"}
    assert {n for n, _ in Similarity(2).named_parameters()} == {"rotation", "translation", "log_scale"}
    assert Rigid(3).rotation.shape == (1, 3) and Rigid(2).rotation.shape == (1, 1)


# ---------------------------------------------------------------------- constructors
@pytest.mark.parametrize("ndim", [2, 3])
def test_from_transform_chain_keeps_the_mapping(ndim):
    rng = np.random.default_rng(7 + ndim)
    center = rng.normal(size=ndim) * 10
    stage = randomize(Translation(ndim, center=center, dtype=torch.float64), rng)
    points = torch.tensor(rng.normal(size=(1, 25, ndim)) * 40)
    for cls in (Rigid, Similarity, Affine):
        expected = stage(points).detach()
        nxt = cls.from_transform(stage)
        assert type(nxt) is cls
        np.testing.assert_allclose(nxt.center.numpy(), stage.center.numpy())
        np.testing.assert_allclose(nxt(points).detach().numpy(), expected.numpy(), atol=1e-9)
        stage = randomize(nxt, rng, scale=0.3)  # the next stage moves on from here


@pytest.mark.parametrize("cls", CLASSES)
def test_from_matrix_roundtrip_and_batched_input(cls):
    rng = np.random.default_rng(11)
    t = randomize(cls(3, batch_size=3, center=rng.normal(size=(3, 3)), dtype=torch.float64), rng)
    matrix = t.affine_matrix().detach()
    back = cls.from_matrix(matrix, center=t.center, dtype=torch.float64)
    assert back.batch_size == 3
    np.testing.assert_allclose(back.affine_matrix().detach().numpy(), matrix.numpy(), atol=1e-10)
    for name, p in t.named_parameters():
        np.testing.assert_allclose(getattr(back, name).detach().numpy(), p.detach().numpy(), atol=1e-9)
    single = cls.from_matrix(matrix[0].numpy())  # (D+1, D+1), centre at the origin
    np.testing.assert_allclose(single.affine_matrix().detach()[0].numpy(), matrix[0].numpy(), atol=1e-6)


def test_from_matrix_projects_onto_the_smaller_class():
    a = np.diag([1.1, 0.9, 1.0, 1.0])
    a[:3, 3] = [1.0, 2.0, 3.0]
    rigid = Rigid.from_matrix(a, center=[5.0, 5.0, 5.0], dtype=torch.float64)
    np.testing.assert_allclose(rigid.linear_part().detach()[0].numpy(), np.eye(3), atol=1e-12)
    # the centre's image is kept exactly
    c = torch.tensor([[[5.0, 5.0, 5.0]]], dtype=torch.float64)
    np.testing.assert_allclose(rigid(c).detach()[0, 0].numpy(), a[:3, :3] @ [5, 5, 5] + a[:3, 3])
    with pytest.raises(ValueError, match="homogeneous"):
        Affine.from_matrix(np.eye(5))
    with pytest.raises(ValueError, match="reflection"):
        Similarity.from_matrix(np.diag([-1.0, 1.0, 1.0]))


def test_set_center_keeps_mapping_and_center_validation():
    rng = np.random.default_rng(5)
    t = randomize(Similarity(3, batch_size=2, dtype=torch.float64), rng)
    points = torch.tensor(rng.normal(size=(2, 10, 3)) * 30)
    before = t(points).detach()
    t.set_center(rng.normal(size=(2, 3)) * 15)
    np.testing.assert_allclose(t(points).detach().numpy(), before.numpy(), atol=1e-10)
    t.set_center([1.0, 2.0, 3.0])  # (D,) broadcasts over the batch
    np.testing.assert_allclose(t.center.numpy(), [[1, 2, 3], [1, 2, 3]])
    with pytest.raises(ValueError, match="center"):
        t.set_center([1.0, 2.0])
    with pytest.raises(ValueError):
        Affine(4)


def test_batched_transform_maps_each_pair_with_its_own_parameters():
    rng = np.random.default_rng(9)
    t = randomize(Rigid(3, batch_size=4, center=rng.normal(size=(4, 3)), dtype=torch.float64), rng)
    points = torch.tensor(rng.normal(size=(4, 6, 2, 3)))  # (B, ..., D)
    out = t(points)
    assert out.shape == points.shape
    for i in range(4):
        single = Rigid.from_matrix(t.affine_matrix().detach()[i], dtype=torch.float64)
        np.testing.assert_allclose(out[i].detach().numpy(), single(points[i : i + 1]).detach()[0].numpy(), atol=1e-10)


def test_inverse():
    rng = np.random.default_rng(13)
    t = randomize(Affine(3, center=[3.0, 1.0, -2.0], dtype=torch.float64), rng)
    points = torch.tensor(rng.normal(size=(1, 20, 3)) * 20)
    np.testing.assert_allclose(t.inverse()(t(points)).detach().numpy(), points.numpy(), atol=1e-9)


def test_gradients_reach_parameters():
    rng = np.random.default_rng(1)
    points = torch.tensor(rng.normal(size=(2, 5, 3)))
    for cls in CLASSES:
        t = randomize(cls(3, batch_size=2, dtype=torch.float64), rng)
        names, params = zip(*t.named_parameters())

        def f(*values, t=t, names=names):
            return torch.func.functional_call(t, dict(zip(names, values)), (points,))

        assert torch.autograd.gradcheck(f, tuple(p.detach().requires_grad_() for p in params))


# ---------------------------------------------------------------------- composite
def test_composite_order_matches_itk_and_collapses_to_product():
    rng = np.random.default_rng(21)
    a = randomize(Affine(3, center=[1.0, 2.0, 3.0], dtype=torch.float64), rng)
    r = randomize(Rigid(3, center=[-4.0, 0.0, 9.0], dtype=torch.float64), rng)
    s = randomize(Translation(3, dtype=torch.float64), rng)
    comp = Composite([a, r, s])
    points = torch.tensor(rng.normal(size=(1, 30, 3)) * 25)
    expected = a(r(s(points)))  # the last in the list acts first
    np.testing.assert_allclose(comp(points).detach().numpy(), expected.detach().numpy(), atol=1e-10)
    assert comp.is_linear and len(comp) == 3 and comp[1] is r
    product = a.affine_matrix() @ r.affine_matrix() @ s.affine_matrix()
    np.testing.assert_allclose(comp.affine_matrix().detach().numpy(), product.detach().numpy(), atol=1e-12)
    itk = sitk.CompositeTransform([to_sitk(a), to_sitk(r), to_sitk(s)])
    np.testing.assert_allclose(sitk_points(itk, points[0].numpy()), expected.detach()[0].numpy(), atol=1e-9)
    assert len(list(comp.parameters())) == 5


def test_composite_broadcasts_a_shared_stage_and_validates():
    rng = np.random.default_rng(4)
    shared = randomize(Affine(2, dtype=torch.float64), rng)
    per_pair = randomize(Rigid(2, batch_size=3, dtype=torch.float64), rng)
    comp = Composite([shared, per_pair])
    points = torch.tensor(rng.normal(size=(3, 7, 2)))
    assert comp.batch_size == 3
    np.testing.assert_allclose(
        comp(points).detach().numpy(), shared(per_pair(points).reshape(1, -1, 2)).reshape(3, 7, 2).detach().numpy()
    )
    assert comp.affine_matrix().shape == (3, 3, 3)
    with pytest.raises(ValueError, match="dimension"):
        Composite([Affine(2), Affine(3)])
    with pytest.raises(ValueError, match="batch"):
        Composite([Affine(2, batch_size=2), Affine(2, batch_size=3)])
    with pytest.raises(ValueError):
        Composite([])


def test_rotation_parameters_equal_scipy_at_every_angle():
    """Written out without scipy (import cost); scipy's rotation vectors are the reference,
    including angles at and near pi (where the axis sign is arbitrary only at exactly pi) and near 0."""
    rng = np.random.default_rng(5)
    axes = rng.standard_normal((200, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    vectors = [Rotation.random(500, random_state=2).as_rotvec()]
    vectors += [axes * angle for angle in (np.pi - 1e-9, np.pi - 1e-4, 3.0, 1e-3, 1.1e-3, 1e-6, 1e-12, 0.0)]
    matrices = Rotation.from_rotvec(np.concatenate(vectors)).as_matrix()
    got = rotation_parameters(matrices)
    np.testing.assert_allclose(got, Rotation.from_matrix(matrices).as_rotvec(), rtol=0, atol=1e-12)
    # exactly pi: either sign of the axis is the same rotation
    half_turns = Rotation.from_rotvec(axes * np.pi).as_matrix()
    np.testing.assert_allclose(Rotation.from_rotvec(rotation_parameters(half_turns)).as_matrix(), half_turns, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(rotation_parameters(half_turns), axis=1), np.pi, atol=1e-12)
