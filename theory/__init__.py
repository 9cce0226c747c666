"""Closed-form predictions (pure NumPy, float64) for linear contrastive learning with heads."""

from theory.dynamics import feature_trajectories, plateau_time
from theory.linear import (
    effective_rank,
    end_to_end_weights,
    entropy_effective_rank,
    layer_weights,
    learned_features,
    optimal_gram,
    optimal_loss,
    representation_stds,
    spectral_loss,
)
from theory.moments import Moments, validate_moments
from theory.weight_decay import (
    FixedPoints,
    basin_weights,
    fixed_points,
    global_minimum_weights,
    global_threshold,
    survival_threshold,
)

__all__ = [
    "Moments",
    "validate_moments",
    "optimal_gram",
    "learned_features",
    "end_to_end_weights",
    "layer_weights",
    "representation_stds",
    "optimal_loss",
    "effective_rank",
    "entropy_effective_rank",
    "spectral_loss",
    "feature_trajectories",
    "plateau_time",
    "FixedPoints",
    "fixed_points",
    "survival_threshold",
    "global_threshold",
    "global_minimum_weights",
    "basin_weights",
]
