"""Centred linear transforms: translation, rigid, similarity, affine (2D and 3D, batched).

Every transform here maps points of the *fixed* image's physical space (mm, LPS) to the
*moving* image's physical space, and is centred like ITK's ``MatrixOffsetTransformBase``::

    T(x) = A (x - c) + c + t

with ``c`` the centre of rotation (a buffer, mm, not optimised), ``A`` the ``D x D`` linear
part and ``t`` the translation (mm). Parameters are in natural units (mm, radians, log-scale)
so that an optimiser can scale them; all hold a leading batch axis ``B`` of independent pairs.

The homogeneous matrix :meth:`affine_matrix` ``(B, D+1, D+1)`` is what ITK writes as
``AffineTransform_double_D_D`` with ``FixedParameters = c`` and ``Parameters = (A row-major, t)``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .base import LinearTransform, SpatialTransform

__all__ = [
    "CenteredLinearTransform",
    "Translation",
    "Rigid",
    "Similarity",
    "Affine",
    "rotation_matrix",
    "rotation_parameters",
]

ArrayLike = Tensor | np.ndarray | Sequence[float] | Sequence[Sequence[float]]


# ---------------------------------------------------------------------- rotations
def _skew(rotvec: Tensor) -> Tensor:
    """Skew-symmetric ``(B, 3, 3)`` matrices ``[v]_x`` of rotation vectors ``(B, 3)``."""
    zero = torch.zeros_like(rotvec[:, 0])
    x, y, z = rotvec.unbind(-1)
    rows = (
        torch.stack((zero, -z, y), -1),
        torch.stack((z, zero, -x), -1),
        torch.stack((-y, x, zero), -1),
    )
    return torch.stack(rows, -2)


def _rodrigues(rotvec: Tensor) -> Tensor:
    """``exp([v]_x) = I + a K + b K^2`` with ``a = sin(t)/t``, ``b = (1 - cos t)/t^2``, ``t = |v|``.

    Written out rather than ``torch.linalg.matrix_exp``, which loses ~40 ulp in float32; ``b``
    uses ``2 sin^2(t/2)`` (no cancellation) and tiny angles use Taylor series, so values and
    gradients are finite and accurate at ``v = 0``.
    """
    k = _skew(rotvec)
    theta2 = (rotvec * rotvec).sum(-1)[:, None, None]
    small = theta2 < 1e-6
    theta = torch.sqrt(torch.where(small, torch.ones_like(theta2), theta2))  # never sqrt(0): finite gradients
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    half = theta / 2.0
    b = torch.where(small, 0.5 - theta2 / 24.0, 0.5 * (torch.sin(half) / half) ** 2)
    eye = torch.eye(3, dtype=rotvec.dtype, device=rotvec.device)
    return eye + a * k + b * (k @ k)


def rotation_matrix(rotation: Tensor) -> Tensor:
    """Rotation matrices from rotation parameters.

    Parameters
    ----------
    rotation : Tensor
        ``(B, 1)`` angles in radians (2D, counter-clockwise from x to y) or ``(B, 3)``
        rotation vectors ``axis * angle`` in radians (3D).

    Returns
    -------
    Tensor
        ``(B, D, D)`` proper rotation matrices, differentiable in ``rotation``. In 3D this is
        the exponential of the skew matrix ``exp([v]_x)`` (Rodrigues' formula), smooth at zero
        and free of gimbal lock.
    """
    if rotation.shape[-1] == 1:
        cos, sin = torch.cos(rotation[:, 0]), torch.sin(rotation[:, 0])
        return torch.stack((torch.stack((cos, -sin), -1), torch.stack((sin, cos), -1)), -2)
    if rotation.shape[-1] == 3:
        return _rodrigues(rotation)
    raise ValueError(f"rotation parameters must have 1 (2D) or 3 (3D) values, got shape {tuple(rotation.shape)}")


def _nearest_rotation(matrix: np.ndarray) -> np.ndarray:
    """Closest proper rotation ``(B, D, D)`` to each matrix (polar decomposition via SVD)."""
    u, _, vt = np.linalg.svd(matrix)
    det = np.linalg.det(u @ vt)
    u[..., -1] *= np.sign(det)[..., None]  # flip the weakest axis rather than return a reflection
    return u @ vt


def rotation_parameters(matrix: ArrayLike) -> np.ndarray:
    """Inverse of :func:`rotation_matrix`: angles ``(B, 1)`` (2D) or rotation vectors ``(B, 3)`` (3D).

    ``matrix`` ``(B, D, D)`` or ``(D, D)`` is first projected onto the nearest rotation.
    """
    array = _to_numpy(matrix)
    m = _nearest_rotation(array.reshape(-1, *array.shape[-2:]))
    if m.shape[-1] == 2:
        return np.arctan2(m[:, 1, 0], m[:, 0, 0])[:, None]
    return _rotation_vectors(m)


def _rotation_vectors(m: np.ndarray) -> np.ndarray:
    """Rotation vectors ``(B, 3)`` of proper rotations ``(B, 3, 3)``, robust at every angle.

    Through the unit quaternion, as scipy's ``Rotation.from_matrix(m).as_rotvec()`` (Markley's
    choice of the largest of the trace and the diagonal, which keeps angles near pi exact),
    written out because importing scipy.spatial is a visible share of a command-line run."""
    trace = np.einsum("bii->b", m)
    decision = np.concatenate([np.einsum("bii->bi", m), trace[:, None]], axis=1)
    choice = decision.argmax(axis=1)
    q = np.empty((m.shape[0], 4))  # (x, y, z, w)
    for b, c in enumerate(choice):
        r = m[b]
        if c == 3:
            q[b] = (r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1], 1.0 + trace[b])
        else:
            i, j, k = c, (c + 1) % 3, (c + 2) % 3
            q[b, i] = 1.0 - trace[b] + 2.0 * r[i, i]
            q[b, j] = r[j, i] + r[i, j]
            q[b, k] = r[k, i] + r[i, k]
            q[b, 3] = r[k, j] - r[j, k]
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q[q[:, 3] < 0] *= -1.0  # w >= 0: the angle in [0, pi]
    vector_norm = np.linalg.norm(q[:, :3], axis=1)
    angle = 2.0 * np.arctan2(vector_norm, q[:, 3])
    small = angle <= 1e-3
    with np.errstate(divide="ignore", invalid="ignore"):
        # angle / sin(angle / 2), by its Taylor series where the quotient loses precision
        scale = np.where(small, 2.0 + angle**2 / 12.0 + 7.0 * angle**4 / 2880.0, angle / np.sin(angle / 2.0))
    return scale[:, None] * q[:, :3]


# ---------------------------------------------------------------------- helpers
def _to_numpy(value: ArrayLike) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.detach().cpu().double().numpy()
    return np.asarray(value, dtype=np.float64)


def _batched(value: ArrayLike, batch_size: int, shape: tuple[int, ...], name: str) -> np.ndarray:
    """``value`` as a float64 ``(B, *shape)`` array, broadcasting an unbatched value."""
    array = _to_numpy(value)
    if array.shape == shape:
        array = np.broadcast_to(array, (batch_size, *shape))
    if array.shape != (batch_size, *shape):
        raise ValueError(f"{name} must have shape {shape} or {(batch_size, *shape)}, got {array.shape}")
    return np.array(array, dtype=np.float64, copy=True)  # writable, owns its memory


def _homogeneous(matrix: ArrayLike, ndim: int | None = None) -> np.ndarray:
    """A homogeneous matrix ``(D+1, D+1)`` or ``(B, D+1, D+1)`` as float64 ``(B, D+1, D+1)``."""
    m = _to_numpy(matrix)
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3 or m.shape[-1] != m.shape[-2] or m.shape[-1] not in (3, 4):
        raise ValueError(f"expected a homogeneous (D+1, D+1) or (B, D+1, D+1) matrix with D in (2, 3), got shape {m.shape}")
    if ndim is not None and m.shape[-1] != ndim + 1:
        raise ValueError(f"expected a {ndim}D homogeneous matrix ({ndim + 1}x{ndim + 1}), got shape {m.shape}")
    return m


# ---------------------------------------------------------------------- base class
class CenteredLinearTransform(LinearTransform):
    """Common machinery of centred linear transforms ``T(x) = A (x - c) + c + t``.

    Parameters
    ----------
    ndim : int
        Spatial dimension D (2 or 3).
    batch_size : int
        Number B of independent transforms.
    center : array-like, optional
        Centre of rotation/scaling ``c`` in mm, ``(D,)`` or ``(B, D)``; default the origin.
    dtype : torch.dtype
        Floating dtype of parameters and buffers (default float32).

    Notes
    -----
    Subclasses define :meth:`linear_part` ``(B, D, D)``. ``translation`` ``(B, D)`` mm is a
    parameter of every subclass. ``center`` is a buffer, so it moves with ``.to(device)`` but
    is not optimised; change it with :meth:`set_center`, which keeps the mapping as is.
    """

    center: Tensor

    def __init__(self, ndim: int, batch_size: int = 1, center: ArrayLike | None = None, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, got {ndim}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.ndim = int(ndim)
        self.batch_size = int(batch_size)
        c = np.zeros((batch_size, ndim)) if center is None else _batched(center, batch_size, (ndim,), "center")
        self.register_buffer("center", torch.as_tensor(c, dtype=dtype))
        self.translation = nn.Parameter(torch.zeros(batch_size, ndim, dtype=dtype))

    # -------------------------------------------------------------- the mapping
    def linear_part(self) -> Tensor:
        """The ``(B, D, D)`` matrix ``A`` (dimensionless)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def affine_matrix(self) -> Tensor:
        """Homogeneous ``(B, D+1, D+1)`` matrix mapping fixed mm to moving mm (parameters' dtype)."""
        a = self.linear_part()
        c = self.center.to(a.dtype)
        offset = c + self.translation - (a @ c.unsqueeze(-1)).squeeze(-1)
        top = torch.cat((a, offset.unsqueeze(-1)), dim=-1)
        bottom = torch.zeros(self.batch_size, 1, self.ndim + 1, dtype=a.dtype, device=a.device)
        bottom[..., -1] = 1.0
        return torch.cat((top, bottom), dim=-2)

    def forward(self, points: Tensor) -> Tensor:
        """Map points ``(B, ..., D)`` (mm, fixed space) to moving space (mm).

        Computed as ``A (x - c) + c + t`` (not via the offset) so that far-from-origin points
        keep their precision in float32.
        """
        a = self.linear_part().to(points.dtype)
        c = self.center.to(points.dtype)
        t = self.translation.to(points.dtype)
        b, d = a.shape[0], self.ndim
        flat = points.reshape(b, -1, d) - c[:, None]
        out = flat @ a.transpose(1, 2) + (c + t)[:, None]
        return out.reshape(points.shape)

    # -------------------------------------------------------------- centre
    @torch.no_grad()
    def set_center(self, center: ArrayLike) -> None:
        """Move the centre ``c`` (mm, ``(D,)`` or ``(B, D)``) keeping the mapping unchanged.

        The translation is updated to ``t' = t + (A - I)(c' - c)`` so ``T`` is the same
        function; for a fresh (identity) transform this simply sets the centre.
        """
        new = torch.as_tensor(_batched(center, self.batch_size, (self.ndim,), "center"), dtype=self.center.dtype, device=self.center.device)
        a = self.linear_part().to(new.dtype)
        eye = torch.eye(self.ndim, dtype=new.dtype, device=new.device)
        shift = ((a - eye) @ (new - self.center).unsqueeze(-1)).squeeze(-1)
        self.translation.add_(shift.to(self.translation.dtype))
        self.center.copy_(new)

    # -------------------------------------------------------------- constructors
    def _set_from_matrix(self, matrix: np.ndarray) -> None:
        """Set parameters from homogeneous float64 ``(B, D+1, D+1)`` (subclasses override)."""
        raise NotImplementedError  # pragma: no cover - abstract

    @classmethod
    def from_matrix(
        cls,
        matrix: ArrayLike,
        center: ArrayLike | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> "CenteredLinearTransform":
        """Build from a homogeneous fixed->moving matrix ``(D+1, D+1)`` or ``(B, D+1, D+1)`` (mm).

        Parameters
        ----------
        matrix : array-like
            ``[[A, o], [0, 1]]`` with ``T(x) = A x + o``.
        center : array-like, optional
            Centre ``c`` to use (mm, ``(D,)`` or ``(B, D)``); default the origin. The
            translation becomes ``t = o - c + A c`` so that ``T`` is unchanged.
        dtype : torch.dtype
            Parameter dtype.

        Notes
        -----
        A class with fewer degrees of freedom keeps the closest member: ``Translation`` keeps
        only the offset at the centre, ``Rigid`` the nearest rotation (polar decomposition),
        ``Similarity`` that rotation and the scale ``det(A)^(1/D)``. The translation is then
        chosen so that ``T(c)`` is exact.
        """
        m = _homogeneous(matrix)
        ndim = m.shape[-1] - 1
        out = cls(ndim, batch_size=m.shape[0], center=center, dtype=dtype)
        out._set_from_matrix(m)
        return out

    @classmethod
    def from_transform(cls, transform: LinearTransform, dtype: torch.dtype | None = None) -> "CenteredLinearTransform":
        """Start a (usually richer) transform from another linear one, e.g. ``Affine.from_transform(rigid)``.

        The centre is taken over when ``transform`` has one; the mapping is kept exactly when
        ``cls`` can represent it (see :meth:`from_matrix` otherwise). The result lives on the
        same device as ``transform``.
        """
        if not isinstance(transform, SpatialTransform) or not transform.is_linear:
            raise TypeError(f"from_transform needs a linear transform, got {type(transform).__name__}")
        matrix = transform.affine_matrix().detach()
        center = getattr(transform, "center", None)
        dtype = dtype or (matrix.dtype if matrix.is_floating_point() else torch.float32)
        out = cls.from_matrix(matrix, center=center, dtype=dtype)
        return out.to(matrix.device)

    def _translation_for(self, m: np.ndarray, a: np.ndarray) -> np.ndarray:
        """Translation ``t`` such that ``A (c - c) + c + t = M c``: keeps the image of the centre."""
        c = self.center.detach().cpu().double().numpy()
        d = self.ndim
        image_of_c = np.einsum("bij,bj->bi", m[:, :d, :d], c) + m[:, :d, d]
        return image_of_c - c

    def _copy(self, name: str, value: np.ndarray) -> None:
        param = getattr(self, name)
        with torch.no_grad():
            param.copy_(torch.as_tensor(value, dtype=param.dtype))

    def inverse(self) -> "Affine":
        """The inverse mapping (moving mm -> fixed mm) as an :class:`Affine` (detached), same centre."""
        m = torch.linalg.inv(self.affine_matrix().detach().double())
        return Affine.from_matrix(m, center=self.center, dtype=self.translation.dtype).to(self.center.device)

    def extra_repr(self) -> str:
        return f"ndim={self.ndim}, batch_size={self.batch_size}"


# ---------------------------------------------------------------------- concrete classes
class Translation(CenteredLinearTransform):
    """``T(x) = x + t``: translation ``t`` ``(B, D)`` in mm.

    The centre has no effect on the mapping but is kept (and written to ITK files) so that a
    later stage can start from it.
    """

    def linear_part(self) -> Tensor:
        eye = torch.eye(self.ndim, dtype=self.translation.dtype, device=self.translation.device)
        return eye.expand(self.batch_size, self.ndim, self.ndim)

    def _set_from_matrix(self, m: np.ndarray) -> None:
        eye = np.broadcast_to(np.eye(self.ndim), m[:, :-1, :-1].shape)
        self._copy("translation", self._translation_for(m, eye))


class Rigid(CenteredLinearTransform):
    """Rotation about the centre then translation: ``T(x) = R (x - c) + c + t``.

    Parameters
    ----------
    ndim, batch_size, center, dtype
        See :class:`CenteredLinearTransform`.

    Attributes
    ----------
    rotation : nn.Parameter
        2D: angle ``(B, 1)`` in radians (counter-clockwise from +x towards +y).
        3D: rotation vector ``(B, 3)`` = unit axis * angle in radians; ``R = exp([v]_x)``.
    translation : nn.Parameter
        ``(B, D)`` in mm.
    """

    def __init__(self, ndim: int, batch_size: int = 1, center: ArrayLike | None = None, dtype: torch.dtype = torch.float32) -> None:
        super().__init__(ndim, batch_size, center, dtype)
        self.rotation = nn.Parameter(torch.zeros(batch_size, 1 if ndim == 2 else 3, dtype=dtype))

    def rotation_matrix(self) -> Tensor:
        """Rotation ``R`` ``(B, D, D)``."""
        return rotation_matrix(self.rotation)

    def linear_part(self) -> Tensor:
        return self.rotation_matrix()

    def _set_from_matrix(self, m: np.ndarray) -> None:
        a = m[:, :-1, :-1]
        self._copy("rotation", rotation_parameters(a))
        self._copy("translation", self._translation_for(m, _nearest_rotation(a)))


class Similarity(Rigid):
    """Isotropic scaling and rotation about the centre, then translation.

    ``T(x) = s R (x - c) + c + t`` with ``s = exp(log_scale)``.

    Attributes
    ----------
    rotation, translation
        As in :class:`Rigid`.
    log_scale : nn.Parameter
        ``(B, 1)``, natural log of the isotropic scale (0 = no scaling).
    """

    def __init__(self, ndim: int, batch_size: int = 1, center: ArrayLike | None = None, dtype: torch.dtype = torch.float32) -> None:
        super().__init__(ndim, batch_size, center, dtype)
        self.log_scale = nn.Parameter(torch.zeros(batch_size, 1, dtype=dtype))

    def scale(self) -> Tensor:
        """Isotropic scale ``(B, 1)``."""
        return torch.exp(self.log_scale)

    def linear_part(self) -> Tensor:
        return self.rotation_matrix() * self.scale()[..., None]

    def _set_from_matrix(self, m: np.ndarray) -> None:
        a = m[:, :-1, :-1]
        det = np.linalg.det(a)
        if np.any(det <= 0):
            raise ValueError("a similarity cannot represent a matrix with non-positive determinant (reflection)")
        scale = det ** (1.0 / self.ndim)
        r = _nearest_rotation(a / scale[:, None, None])
        self._copy("rotation", rotation_parameters(r))
        self._copy("log_scale", np.log(scale)[:, None])
        self._copy("translation", self._translation_for(m, scale[:, None, None] * r))


class Affine(CenteredLinearTransform):
    """General affine map about the centre: ``T(x) = A (x - c) + c + t``.

    Attributes
    ----------
    matrix : nn.Parameter
        ``A`` ``(B, D, D)``, initialised to identity (dimensionless).
    translation : nn.Parameter
        ``(B, D)`` in mm.
    """

    def __init__(self, ndim: int, batch_size: int = 1, center: ArrayLike | None = None, dtype: torch.dtype = torch.float32) -> None:
        super().__init__(ndim, batch_size, center, dtype)
        self.matrix = nn.Parameter(torch.eye(ndim, dtype=dtype).repeat(batch_size, 1, 1))

    def linear_part(self) -> Tensor:
        return self.matrix

    def _set_from_matrix(self, m: np.ndarray) -> None:
        a = m[:, :-1, :-1]
        self._copy("matrix", a)
        self._copy("translation", self._translation_for(m, a))
