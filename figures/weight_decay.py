"""Weight decay: where gradient flow ends, from either side of the basin boundary, vs the branches.

Run:  python -m figures.weight_decay [--quick] [--out DIR] [--redraw]
Expected runtime: ~12 s on 2 CPU cores, cold compilation cache (one vmapped solve per depth);
--quick (depth 2 only) ~5 s.

With penalty (wd/2) sum_l ||W_l||_F^2 each feature's per-layer singular value sigma has fixed points
0 and the roots of 4 v^(L-1) (a - b^2 v^L) = wd (v = sigma^2): for depth >= 2 an unstable root (the
basin boundary) and a stable root, which exist up to the survival threshold g_max. Zero is the
global minimum above the lower global threshold. Simulations: gradient flow on the exact population
loss from aligned, balanced init sigma0 = 1.1 x (unstable root) and 0.9 x (unstable root) (above
g_max, where there is no root, 1.1 and 0.9 x the point where the roots merged). Theory:
theory.weight_decay.fixed_points, survival_threshold, global_threshold.
"""

from __future__ import annotations

import dataclasses
import sys

import jax
import jax.numpy as jnp
import numpy as np

from figures._common import caption, config_record, progress, run_figure
from simulations import measure
from simulations.experiments.weighting import population_loss
from simulations.flow import gradient_flow
from theory import weight_decay as wd_theory

NAME = "weight_decay"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """One feature (a, b), a sweep of weight decays in units of its survival threshold.

    Attributes:
        pos_cov, second_moment: the feature's a and b.
        depths: network depths (one panel each; depth >= 2 has a nonzero unstable root).
        wd_fractions: weight decays as fractions of the survival threshold g_max of each depth.
        offset: inits start at (1 + offset) and (1 - offset) times the basin boundary.
        theory_points: weight decays on the theory curves.
    """

    pos_cov: float = 0.8
    second_moment: float = 1.0
    depths: tuple[int, ...] = (2, 3)
    # Steps of 0.04 from 0.03 skip wd = g_max itself, where the two roots merge into a semi-stable
    # point that theory reports as absent but a flow from above still approaches (algebraically).
    wd_fractions: tuple[float, ...] = tuple(np.round(np.linspace(0.03, 1.23, 31), 4).tolist())
    offset: float = 0.1
    theory_points: int = 400

    def __post_init__(self):
        if any(depth < 2 for depth in self.depths):
            raise ValueError(f"depths must all be >= 2 (an unstable root exists), got {self.depths!r}")
        if not 0 < self.offset < 1:
            raise ValueError(f"offset must lie in (0, 1), got {self.offset!r}")

    @classmethod
    def quick(cls) -> Config:
        return cls(depths=(2,), wd_fractions=tuple(np.round(np.linspace(0.1, 1.2, 8), 4).tolist()),
                   theory_points=120)


def _boundary(a, b, depth, weight_decay):
    """Per-layer sigma of the basin boundary: the unstable root, or where the roots merge above g_max."""
    unstable = wd_theory.fixed_points(a, b, depth, weight_decay).unstable[0]
    if np.isfinite(unstable):
        return float(unstable)
    v_merge = (a[0] * (depth - 1) / (b[0] ** 2 * (2 * depth - 1))) ** (1.0 / depth)
    return float(np.sqrt(v_merge))


def _branches(a, b, depth, weight_decays):
    """Stable and unstable per-layer sigma along a weight-decay grid, (W,) each, nan where absent."""
    roots = [wd_theory.fixed_points(a, b, depth, float(w)) for w in weight_decays]
    return np.array([r.stable[0] for r in roots]), np.array([r.unstable[0] for r in roots])


def compute(config: Config):
    """Train above and below the boundary at every weight decay and depth; tabulate branches."""
    a, b = np.array([config.pos_cov]), np.array([config.second_moment])
    fractions = np.asarray(config.wd_fractions)
    arrays = {"depths": np.asarray(config.depths), "wd_fractions": fractions}
    diagnostics, thresholds = [], {}
    with jax.enable_x64(True):
        for depth in progress(config.depths, desc=NAME):
            survival = float(wd_theory.survival_threshold(a, b, depth)[0])
            global_ = float(wd_theory.global_threshold(a, b, depth)[0])
            weight_decays = fractions * survival
            boundary = np.array([_boundary(a, b, depth, w) for w in weight_decays])
            inits = np.concatenate([(1 + config.offset) * boundary, (1 - config.offset) * boundary])  # (2W,)
            wds = np.concatenate([weight_decays, weight_decays])
            params = tuple(jnp.asarray(inits)[:, None, None] for _ in range(depth))  # aligned, balanced
            n = inits.size
            args = (jnp.full((n, 1, 1), config.pos_cov), jnp.full((n, 1, 1), config.second_moment),
                    jnp.asarray(wds))
            result = gradient_flow(population_loss, params, args, batched=True)
            measured = measure.feature_weights_batch(result.params)[:, :, 0]  # (2W, L)
            predicted = np.stack([wd_theory.basin_weights(a, b, depth, float(w), float(s))[:, 0]
                                  for w, s in zip(wds, inits)])
            theory_wd = np.linspace(0.0, fractions.max() * 1.02, config.theory_points) * survival
            stable, unstable = _branches(a, b, depth, theory_wd)
            error = np.abs(measured - predicted)
            arrays |= {
                f"weight_decays_L{depth}": weight_decays, f"inits_L{depth}": inits.reshape(2, -1),
                f"measured_L{depth}": measured.reshape(2, -1, depth),
                f"predicted_L{depth}": predicted.reshape(2, -1, depth),
                f"theory_wd_L{depth}": theory_wd, f"stable_L{depth}": stable, f"unstable_L{depth}": unstable,
            }
            thresholds[f"L{depth}"] = {"survival": survival, "global": global_}
            diagnostics.append({
                "depth": depth,
                "converged": np.asarray(result.converged).tolist(),
                "t_final": np.asarray(result.t_final).tolist(),
                "max_abs_error": float(error.max()),
            })
            print(f"{NAME}: depth {depth}: max |sim - basin prediction| = {error.max():.2e}, "
                  f"all converged: {bool(np.all(result.converged))}", file=sys.stderr)
    record = {"config": config_record(config), "seed": None, "thresholds": thresholds, "diagnostics": diagnostics}
    return arrays, record


def plot(arrays, record):
    """One panel per depth: per-layer weights vs weight decay; branches as lines, runs as markers."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    depths = [int(v) for v in arrays["depths"]]
    fig, axes = plt.subplots(1, len(depths), figsize=(max(6.5 * len(depths), 10), 6.2), squeeze=False)
    layer_colors = {1: "tab:blue", "last": "tab:orange"}
    for ax, depth, diag in zip(axes[0], depths, record["diagnostics"]):
        thresholds = record["thresholds"][f"L{depth}"]
        theory_wd = arrays[f"theory_wd_L{depth}"]
        stable, unstable = arrays[f"stable_L{depth}"], arrays[f"unstable_L{depth}"]
        wd = arrays[f"weight_decays_L{depth}"]
        measured = arrays[f"measured_L{depth}"]  # (2, W, L): above, below
        for layer, color in ((1, layer_colors[1]), (depth, layer_colors["last"])):
            ax.plot(theory_wd, stable**layer, color=color, lw=1.5)
            ax.plot(theory_wd, unstable**layer, color=color, lw=1.2, ls="--")
            ax.plot(wd, measured[0, :, layer - 1], ls="none", marker="o", color=color, ms=6, zorder=3)
            ax.plot(wd, measured[1, :, layer - 1], ls="none", marker="v", mfc="none", mec=color, ms=7, zorder=3)
        ax.axhline(0.0, color="0.2", lw=1.5)
        ax.axvspan(thresholds["global"], thresholds["survival"], color="0.9", zorder=0)
        ax.axvline(thresholds["global"], color="0.3", ls=":", lw=1.2)
        ax.axvline(thresholds["survival"], color="0.3", ls="-.", lw=1.2)
        ax.set_xlabel("weight decay wd  (penalty wd/2 sum ||W_l||_F^2)")
        ax.set_ylabel("final weight of the feature")
        ax.set_title(f"depth {depth}: max |sim - basin prediction| = {diag['max_abs_error']:.1e}", fontsize=10)
        top = np.nanmax(stable) ** 1 * 1.12
        ax.set_ylim(-0.04 * top, top)
    handles = [
        Line2D([], [], color=layer_colors[1], lw=1.5, label="layer 1 (sigma)"),
        Line2D([], [], color=layer_colors["last"], lw=1.5, label="last layer (sigma^L)"),
        Line2D([], [], color="0.3", lw=1.5, label="stable root / zero (theory)"),
        Line2D([], [], color="0.3", lw=1.2, ls="--", label="unstable root = basin boundary"),
        Line2D([], [], color="0.3", ls="none", marker="o", label="sim: init 1.1 x boundary"),
        Line2D([], [], color="0.3", ls="none", marker="v", mfc="none", label="sim: init 0.9 x boundary"),
        Line2D([], [], color="0.3", ls=":", label="global threshold (zero becomes global min)"),
        Line2D([], [], color="0.3", ls="-.", label="survival threshold (nonzero roots vanish)"),
    ]
    fig.legend(handles=handles, fontsize=8, loc="lower center", ncol=4, bbox_to_anchor=(0.5, 0.1))
    config = record["config"]
    fig.suptitle(f"Weight decay: the end point depends on the side of the basin boundary "
                 f"(one feature, a = {config['pos_cov']:g}, b = {config['second_moment']:g})", fontsize=11)
    fig.subplots_adjust(left=0.07, right=0.98, top=0.9, bottom=0.3, wspace=0.2)
    caption(fig, "Aligned, balanced init sigma0 just above (filled) or below (open) the unstable root, gradient "
                 "flow on the exact population loss with weight decay. Runs above the boundary follow the stable "
                 "root up to the survival threshold, also through the shaded band where zero is already the "
                 "global minimum (the stable root is then only a local minimum); runs below it die at every "
                 "weight decay. Theory: theory.weight_decay.fixed_points and thresholds.", width=170)
    return fig


def main(argv=None) -> int:
    return run_figure(NAME, __doc__, Config, compute, plot, argv)


if __name__ == "__main__":
    sys.exit(main())
