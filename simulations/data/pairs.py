"""Synthetic distributions of augmented pairs (x, x+) and their exact moments.

Two augmented views x, x+ of one sample share the marginal second moment
B = E[x x^T] (`second_moment`); their positive-pair covariance is A = sym E[x x+^T]
(`pos_cov`). All features are zero-mean. A distribution is either a product of independent
per-feature augmentations (diagonal A, B; each feature reduces to a pair (a_i, b_i)) or a
Gaussian pair with joint covariance [[B, A], [A, B]] (general A, B).

Per-feature presets, for a feature of standard deviation s:

=================  ==========================================  ==================  ===========
kind               views                                       a = E[x x+]         b = E[x^2]
=================  ==========================================  ==================  ===========
correlated         jointly Gaussian, correlation phi           phi s^2             s^2
additive_noise     x = s c + t e1, x+ = s c + t e2             s^2                 s^2 + t^2
drop_replace       each view replaced w.p. p by a fresh copy   (1 - p)^2 s^2       s^2
drop_to_zero       each view set to 0 w.p. p                   (1 - p)^2 s^2       (1 - p) s^2
sign_flip          each view's sign flipped w.p. q             (1 - 2q)^2 s^2      s^2
=================  ==========================================  ==================  ===========
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from simulations import draws
from theory.checks import as_finite_array, check_choice, check_float, check_int
from theory.moments import validate_moments

#: kind -> (name of its strength parameter, minimum, maximum).
_STRENGTH_RANGES = {
    "correlated": ("correlation", -1.0, 1.0),
    "additive_noise": ("noise_std", 0.0, None),
    "drop_replace": ("p", 0.0, 1.0),
    "drop_to_zero": ("p", 0.0, 1.0),
    "sign_flip": ("q", 0.0, 1.0),
}
KINDS = tuple(_STRENGTH_RANGES)

# Relative slack when checking that the features reproduce the stored (A, B): rounding only.
_CONSISTENCY_RTOL = 1e-9


def _default_float():
    """The float dtype JAX uses by default (float64 when x64 is enabled)."""
    return jax.dtypes.canonicalize_dtype(np.float64)


# ----------------------------------------------------------------------------------------------
# One feature
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class FeatureAugmentation:
    """One zero-mean feature and the augmentation applied independently to each of its views.

    Attributes:
        kind: one of KINDS ("correlated", "additive_noise", "drop_replace", "drop_to_zero",
            "sign_flip").
        std: standard deviation s > 0 of the clean feature.
        strength: the kind's parameter: correlation phi in [-1, 1], noise_std t >= 0, or a
            probability p / q in [0, 1].
    """

    kind: str
    std: float
    strength: float

    def __post_init__(self):
        check_choice("kind", self.kind, KINDS)
        object.__setattr__(self, "std", check_float("std", self.std, minimum=0.0,
                                                    strict_minimum=True))
        name, minimum, maximum = _STRENGTH_RANGES[self.kind]
        strength = check_float(f"{name} (strength of {self.kind})", self.strength,
                               minimum=minimum, maximum=maximum)
        object.__setattr__(self, "strength", strength)

    @property
    def pos_cov(self) -> float:
        """Exact a = E[x x+] (see the module table)."""
        s2, t = self.std**2, self.strength
        if self.kind == "correlated":
            return t * s2
        if self.kind == "additive_noise":
            return s2
        if self.kind in ("drop_replace", "drop_to_zero"):
            return (1.0 - t) ** 2 * s2
        return (1.0 - 2.0 * t) ** 2 * s2  # sign_flip

    @property
    def second_moment(self) -> float:
        """Exact b = E[x^2] = E[x+^2] (see the module table)."""
        s2, t = self.std**2, self.strength
        if self.kind == "additive_noise":
            return s2 + t**2
        if self.kind == "drop_to_zero":
            return (1.0 - t) * s2
        return s2

    @property
    def invariance_ratio(self) -> float:
        """r = a / b in [-1, 1] (ValueError if b = 0, i.e. drop_to_zero with p = 1)."""
        b = self.second_moment
        if b == 0.0:
            raise ValueError(f"invariance ratio undefined: {self} has zero second moment")
        return self.pos_cov / b

    def sample_pairs(self, key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
        """Draw n independent pairs of views.

        Args:
            key: a jax.random key.
            n: number of pairs, >= 1 (static under jit).

        Returns:
            (x, x_pos), each of shape (n,), default JAX float dtype.
        """
        n = check_int("n", n, minimum=1)
        return _sample_feature(self.kind, key, n, self.std, self.strength)


#: Standard normal rows one draw of each kind consumes (clean value, noises / copies, masks).
_NORMAL_ROWS = {"correlated": 2, "additive_noise": 3, "drop_replace": 5, "drop_to_zero": 3,
                "sign_flip": 3}


@functools.partial(jax.jit, static_argnames=("kind", "n"))
def _sample_feature(kind: str, key: jax.Array, n: int, std, strength):
    """Pairs (x, x_pos) of shape (n,) for one feature; std and strength may be traced scalars.

    All randomness comes from one standard normal draw z of shape (rows, n) (one PRNG call keeps
    compilation cheap). A view is hit with probability p where z <= Phi^(-1)(p), since Phi(z) is
    uniform (p = 0 and p = 1 give thresholds -inf and +inf: never and always).
    """
    z = jax.random.normal(key, (_NORMAL_ROWS[kind], n), _default_float())
    c = z[0]
    if kind == "correlated":
        # x+ = phi c + sqrt(1 - phi^2) e has unit variance and correlation phi with c.
        x_pos = strength * c + jnp.sqrt(jnp.maximum(1.0 - strength**2, 0.0)) * z[1]
        return std * c, std * x_pos
    if kind == "additive_noise":
        return std * c + strength * z[1], std * c + strength * z[2]
    threshold = jax.scipy.special.ndtri(strength)
    hit_first, hit_second = z[-2] <= threshold, z[-1] <= threshold
    if kind == "drop_replace":
        return std * jnp.where(hit_first, z[1], c), std * jnp.where(hit_second, z[2], c)
    if kind == "drop_to_zero":
        return std * jnp.where(hit_first, 0.0, c), std * jnp.where(hit_second, 0.0, c)
    if kind == "sign_flip":
        return std * jnp.where(hit_first, -c, c), std * jnp.where(hit_second, -c, c)
    raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")


def correlated(std: float, correlation: float) -> FeatureAugmentation:
    """Jointly Gaussian views of variance std^2 and correlation phi: a = phi s^2, b = s^2."""
    return FeatureAugmentation(kind="correlated", std=std, strength=correlation)


def additive_noise(std: float, noise_std: float) -> FeatureAugmentation:
    """x = s c + t e1, x+ = s c + t e2 with independent standard normals: a = s^2, b = s^2 + t^2."""
    return FeatureAugmentation(kind="additive_noise", std=std, strength=noise_std)


def drop_replace(std: float, p: float) -> FeatureAugmentation:
    """c ~ N(0, s^2); each view is, w.p. p, an independent copy: a = (1-p)^2 s^2, b = s^2."""
    return FeatureAugmentation(kind="drop_replace", std=std, strength=p)


def drop_to_zero(std: float, p: float) -> FeatureAugmentation:
    """c ~ N(0, s^2); each view is, w.p. p, set to 0: a = (1-p)^2 s^2, b = (1-p) s^2."""
    return FeatureAugmentation(kind="drop_to_zero", std=std, strength=p)


def sign_flip(std: float, q: float) -> FeatureAugmentation:
    """c ~ N(0, s^2); each view's sign flips w.p. q: a = (1-2q)^2 s^2, b = s^2 (q = 1/2: a = 0)."""
    return FeatureAugmentation(kind="sign_flip", std=std, strength=q)


_CONSTRUCTORS = {
    "correlated": correlated,
    "additive_noise": additive_noise,
    "drop_replace": drop_replace,
    "drop_to_zero": drop_to_zero,
    "sign_flip": sign_flip,
}


# ----------------------------------------------------------------------------------------------
# Pairs in R^d
# ----------------------------------------------------------------------------------------------


def _psd_root(matrix: np.ndarray) -> np.ndarray:
    """R with R R^T = matrix for a symmetric PSD (possibly singular) matrix, via eigh."""
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    return eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class AugmentedPairs:
    """The distribution of a pair of views (x, x+) in R^d.

    Attributes:
        pos_cov: A = sym E[x x+^T], shape (d, d) (read-only float64).
        second_moment: B = E[x x^T] = E[x+ x+^T], shape (d, d) (read-only float64).
        features: for a product distribution, one FeatureAugmentation per coordinate (then A and
            B are diagonal with entries a_i, b_i); None for Gaussian pairs with joint covariance
            [[B, A], [A, B]].
    """

    pos_cov: np.ndarray
    second_moment: np.ndarray
    features: tuple[FeatureAugmentation, ...] | None = None

    def __post_init__(self):
        features = self.features
        if features is not None:
            features = tuple(features)
            for i, feature in enumerate(features):
                if not isinstance(feature, FeatureAugmentation):
                    raise ValueError(f"features[{i}] must be a FeatureAugmentation, got {feature!r}")
                if feature.second_moment <= 0.0:
                    raise ValueError(f"features[{i}] has zero second moment ({feature}); "
                                     f"expected b > 0 (drop_to_zero needs p < 1)")
        moments = validate_moments(self.pos_cov, self.second_moment)
        A, B = moments.pos_cov.copy(), moments.second_moment.copy()
        if features is not None:
            if len(features) != B.shape[0]:
                raise ValueError(f"features must have one entry per dimension ({B.shape[0]}), "
                                 f"got {len(features)}")
            expected_A = np.diag([f.pos_cov for f in features])
            expected_B = np.diag([f.second_moment for f in features])
            atol = _CONSISTENCY_RTOL * np.abs(expected_B).max()
            if not np.allclose(A, expected_A, rtol=_CONSISTENCY_RTOL, atol=atol):
                raise ValueError("pos_cov must equal diag(a_i) of the features")
            if not np.allclose(B, expected_B, rtol=_CONSISTENCY_RTOL, atol=atol):
                raise ValueError("second_moment must equal diag(b_i) of the features")
        A.setflags(write=False)
        B.setflags(write=False)
        object.__setattr__(self, "pos_cov", A)
        object.__setattr__(self, "second_moment", B)
        object.__setattr__(self, "features", features)

    @property
    def dim(self) -> int:
        """Input dimension d."""
        return self.second_moment.shape[0]

    @property
    def is_diagonal(self) -> bool:
        """Whether A and B are both diagonal (always true for a product distribution)."""
        A, B = self.pos_cov, self.second_moment
        return bool(np.all(A == np.diag(np.diag(A))) and np.all(B == np.diag(np.diag(B))))

    def _require_diagonal(self, what: str) -> None:
        if not self.is_diagonal:
            raise ValueError(f"{what} needs diagonal pos_cov and second_moment; use the full "
                             f"matrices for a non-diagonal distribution")

    @property
    def pos_cov_diag(self) -> np.ndarray:
        """a_i = A_ii, shape (d,) (diagonal distributions only)."""
        self._require_diagonal("pos_cov_diag")
        return np.diag(self.pos_cov).copy()

    @property
    def second_moment_diag(self) -> np.ndarray:
        """b_i = B_ii, shape (d,) (diagonal distributions only)."""
        self._require_diagonal("second_moment_diag")
        return np.diag(self.second_moment).copy()

    @property
    def invariance_ratios(self) -> np.ndarray:
        """r_i = a_i / b_i in [-1, 1], shape (d,) (diagonal distributions only)."""
        self._require_diagonal("invariance_ratios")
        return self.pos_cov_diag / self.second_moment_diag

    @functools.cached_property
    def _gaussian_roots(self) -> tuple[np.ndarray, np.ndarray]:
        """Square roots of B + A and B - A (both PSD by validation)."""
        return _psd_root(self.second_moment + self.pos_cov), _psd_root(
            self.second_moment - self.pos_cov)

    def sample_pairs(self, key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
        """Draw n independent pairs of views.

        Product distributions: feature i uses key draws.split(key, d)[i], so column i equals
        features[i].sample_pairs(that key, n). Gaussian pairs: with u ~ N(0, B + A) and
        v ~ N(0, B - A) independent, x = (u + v)/sqrt(2), x+ = (u - v)/sqrt(2) has
        E[x x^T] = E[x+ x+^T] = B and E[x x+^T] = A, i.e. joint covariance [[B, A], [A, B]]
        (exact also when it is singular, e.g. A = B gives x = x+).

        Args:
            key: a jax.random key.
            n: number of pairs, >= 1 (static under jit).

        Returns:
            (x, x_pos), each of shape (n, d), default JAX float dtype.
        """
        n = check_int("n", n, minimum=1)
        dtype = _default_float()
        if self.features is None:
            root_sum, root_difference = (jnp.asarray(r, dtype) for r in self._gaussian_roots)
            return _sample_gaussian(key, root_sum, root_difference, n=n)
        stds = jnp.asarray([f.std for f in self.features], dtype)
        strengths = jnp.asarray([f.strength for f in self.features], dtype)
        return sample_product(key, stds, strengths, n=n,
                               kinds=tuple(f.kind for f in self.features))


@functools.partial(jax.jit, static_argnames=("n",))
def _sample_gaussian(key, root_sum, root_difference, *, n):
    """x = (u + v)/sqrt(2), x+ = (u - v)/sqrt(2), u = root_sum g1, v = root_difference g2."""
    dtype = root_sum.dtype
    key_sum, key_difference = draws.split(key)
    u = jax.random.normal(key_sum, (n, root_sum.shape[0]), dtype) @ root_sum.T
    v = jax.random.normal(key_difference, (n, root_sum.shape[0]), dtype) @ root_difference.T
    return (u + v) / np.sqrt(2.0), (u - v) / np.sqrt(2.0)


@functools.partial(jax.jit, static_argnames=("n", "kinds"))
def sample_product(key, stds, strengths, *, n, kinds):
    """Independent features; feature i of kind kinds[i] uses jax.random.split(key, d)[i]."""
    keys = draws.split(key, len(kinds))
    order, xs, x_poss = [], [], []
    # One vmapped draw per kind rather than one traced op per feature.
    for kind in dict.fromkeys(kinds):
        index = np.asarray([i for i, k in enumerate(kinds) if k == kind])
        x, x_pos = jax.vmap(lambda k, s, t, kind=kind: _sample_feature(kind, k, n, s, t))(
            keys[index], stds[index], strengths[index])
        order.extend(index.tolist())
        xs.append(x)
        x_poss.append(x_pos)
    inverse = np.argsort(np.asarray(order))
    return jnp.concatenate(xs)[inverse].T, jnp.concatenate(x_poss)[inverse].T


def diagonal_pairs(pos_cov, second_moment) -> AugmentedPairs:
    """Independent Gaussian features with prescribed (a_i, b_i).

    Feature i is correlated(std=sqrt(b_i), correlation=a_i / b_i).

    Args:
        pos_cov: a, shape (d,), |a_i| <= b_i.
        second_moment: b, shape (d,), b_i > 0.

    Returns:
        AugmentedPairs with A = diag(a), B = diag(b).
    """
    validate_moments(pos_cov, second_moment)
    a = as_finite_array("pos_cov", pos_cov, ndim=1)
    b = as_finite_array("second_moment", second_moment, ndim=1)
    # validate_moments allows |a| to exceed b by rounding; clip the correlation back into range.
    features = tuple(correlated(np.sqrt(b_i), float(np.clip(a_i / b_i, -1.0, 1.0)))
                     for a_i, b_i in zip(a, b))
    return AugmentedPairs(pos_cov=np.diag(a), second_moment=np.diag(b), features=features)


def gaussian_pairs(pos_cov, second_moment) -> AugmentedPairs:
    """Gaussian pairs (x, x+) ~ N(0, [[B, A], [A, B]]) for general symmetric A, B.

    Args:
        pos_cov: A, shape (d, d) (or (d,) for a diagonal), with B - A and B + A PSD.
        second_moment: B, shape (d, d) (or (d,)), positive definite.

    Returns:
        AugmentedPairs with features None.
    """
    moments = validate_moments(pos_cov, second_moment)
    return AugmentedPairs(pos_cov=moments.pos_cov, second_moment=moments.second_moment)


def product_pairs(features: Sequence[FeatureAugmentation]) -> AugmentedPairs:
    """Independent features, A = diag(a_i), B = diag(b_i) from each feature's exact moments.

    Args:
        features: d >= 1 FeatureAugmentation objects, each with b_i > 0.

    Returns:
        AugmentedPairs whose coordinate i is distributed as features[i].
    """
    features = tuple(features)
    if len(features) == 0:
        raise ValueError("features must not be empty")
    for i, feature in enumerate(features):
        if not isinstance(feature, FeatureAugmentation):
            raise ValueError(f"features[{i}] must be a FeatureAugmentation, got {feature!r}")
    return AugmentedPairs(pos_cov=np.diag([f.pos_cov for f in features]),
                          second_moment=np.diag([f.second_moment for f in features]),
                          features=features)


def preset_pairs(kind: str, dim: int, *, std=1.0, strength) -> AugmentedPairs:
    """A product of `dim` features of one kind; std and strength are scalars or (dim,) arrays.

    Example: preset_pairs("sign_flip", 3, strength=[0.0, 0.25, 0.5]) gives r = (1, 0.25, 0).
    """
    check_choice("kind", kind, KINDS)
    dim = check_int("dim", dim, minimum=1)
    stds = as_finite_array("std", std)
    strengths = as_finite_array("strength", strength)
    for name, values in (("std", stds), ("strength", strengths)):
        if values.ndim > 1 or (values.ndim == 1 and values.shape[0] != dim):
            raise ValueError(f"{name} must be a scalar or have shape ({dim},), got {values.shape}")
    stds = np.broadcast_to(stds, (dim,))
    strengths = np.broadcast_to(strengths, (dim,))
    return product_pairs([_CONSTRUCTORS[kind](float(s), float(t))
                          for s, t in zip(stds, strengths)])


def estimate_moments(x: jax.Array, x_pos: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Plug-in estimates of (A, B) from n sampled pairs, using both views for B.

    A_hat = (X^T X+ + X+^T X) / (2n),  B_hat = (X^T X + X+^T X+) / (2n).

    Args:
        x: first views, shape (n, d).
        x_pos: positive views, shape (n, d).

    Returns:
        (pos_cov_hat, second_moment_hat), each of shape (d, d), both symmetric.
    """
    if jnp.ndim(x) != 2:
        raise ValueError(f"x must have shape (n, d), got shape {jnp.shape(x)}")
    if jnp.shape(x_pos) != jnp.shape(x):
        raise ValueError(f"x_pos must have the shape of x {jnp.shape(x)}, got {jnp.shape(x_pos)}")
    if jnp.shape(x)[0] < 1:
        raise ValueError("x must hold at least one sample")
    x, x_pos = jnp.asarray(x), jnp.asarray(x_pos)
    n = x.shape[0]
    cross = x.T @ x_pos
    return (cross + cross.T) / (2 * n), (x.T @ x + x_pos.T @ x_pos) / (2 * n)
