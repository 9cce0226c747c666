"""Models as init/apply pairs: deep linear nets, two-layer ReLU nets, and projection heads.

``simulations.models`` re-exports the deep linear network (:mod:`simulations.models.linear`);
:mod:`simulations.models.relu` holds two-layer ReLU nets (full and diagonal),
:mod:`simulations.models.heads` the frozen reweighting head, and
:mod:`simulations.models.relu_head` the learned ReLU projection head on a linear encoder.
"""

from simulations.models.linear import (
    DEFAULT_INIT,
    DEFAULT_INIT_SCALE,
    INITS,
    LinearParams,
    apply_linear,
    end_to_end,
    init_aligned,
    init_balanced,
    init_gaussian,
    init_linear,
    layer_dims,
    layer_maps,
)

__all__ = ["DEFAULT_INIT", "DEFAULT_INIT_SCALE", "INITS", "LinearParams", "apply_linear", "end_to_end", "init_aligned",
           "init_balanced", "init_gaussian", "init_linear", "layer_dims", "layer_maps"]
