"""Helpers shared by several test files: random valid moments, relative errors, command-line runs.

Fixtures shared by several files (e.g. ``cli_environment``, a private compilation cache for
subprocess runs) live in tests/conftest.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

#: The repository root (the checkout the tests run from).
REPO = Path(__file__).resolve().parent.parent


def random_orthogonal(rng: np.random.Generator, d: int) -> np.ndarray:
    """A Haar-random d x d orthogonal matrix (QR of a Gaussian matrix with the sign fix)."""
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))[None, :]


def random_general_moments(rng: np.random.Generator, d: int) -> tuple[np.ndarray, np.ndarray]:
    """A valid non-diagonal (A, B): B SPD (eigenvalues in (0.5, 2)), A = B^(1/2) C B^(1/2), eig(C) in (-0.9, 0.9)."""
    q = random_orthogonal(rng, d)
    b = q @ np.diag(rng.uniform(0.5, 2.0, d)) @ q.T
    b_sqrt = psd_sqrt(b)
    p = random_orthogonal(rng, d)
    c = p @ np.diag(rng.uniform(-0.9, 0.9, d)) @ p.T
    return b_sqrt @ c @ b_sqrt, b


def psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a PSD matrix (rounding negatives clipped to zero)."""
    eig, vec = np.linalg.eigh(matrix)
    return (vec * np.sqrt(np.clip(eig, 0.0, None))[None, :]) @ vec.T


def relative_error(measured, expected) -> float:
    """max |measured - expected| / max |expected|: one number for a whole array."""
    measured, expected = np.asarray(measured), np.asarray(expected)
    return float(np.max(np.abs(measured - expected)) / max(np.max(np.abs(expected)), 1e-300))


def run_command(args, env, *, module: str = "simulations", cwd: Path = REPO, timeout: float = 600.0):
    """Run ``python -m MODULE ARGS`` as a real process; returns the CompletedProcess (text mode)."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)
