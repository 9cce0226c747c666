"""Data distributions: augmented pairs with known moments, labelled mixtures, and images.

``simulations.data`` re-exports the augmented-pair API (:mod:`simulations.data.pairs`); labelled
Gaussian mixtures for the supervised experiments live in :mod:`simulations.data.mixtures`.
"""

from simulations.data import mixtures
from simulations.data.pairs import (
    KINDS,
    AugmentedPairs,
    FeatureAugmentation,
    additive_noise,
    correlated,
    diagonal_pairs,
    drop_replace,
    drop_to_zero,
    estimate_moments,
    gaussian_pairs,
    preset_pairs,
    product_pairs,
    sample_product,
    sign_flip,
)

__all__ = ["KINDS", "AugmentedPairs", "FeatureAugmentation", "additive_noise", "correlated", "diagonal_pairs",
           "drop_replace", "drop_to_zero", "estimate_moments", "gaussian_pairs", "mixtures", "preset_pairs",
           "product_pairs", "sample_product", "sign_flip"]
