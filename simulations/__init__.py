"""Simulations of projection heads in contrastive learning: data, models, losses, training and experiments.

Run experiments with ``python -m simulations EXPERIMENT [flags]``; the closed-form predictions they are
compared with live in the ``theory`` package.
"""

from theory import __version__

__all__ = ["__version__"]
