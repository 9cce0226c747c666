"""Phase maps of pre error minus post error, with the derived boundary and simulated spot checks.

Run:  python -m figures.downstream_phase [--quick] [--out DIR] [--redraw]
Expected runtime: ~35 s on 2 CPU cores (about 15 s of it compilation); --quick ~20 s.

Heat maps: the closed-form MSE_pre - MSE_post of the variance-normalized ridge probe for target
feature 0 of a depth-2 linear net (blue: pre wins), over (r_0, b_0), (r_0, b_ds_0 / b_0) and
(r_0, weight decay from a large balanced init: per-feature basin, plus the escape from basin
states that are saddles of the full network). Black line: the derived boundary
w_0 = sum_(k != 0) b_ds_k w_k^2 / sum_(k != 0) b_ds_k w_k, drawn from the condition alone
(theory.downstream.pre_advantage_threshold), not from the risks. With w_0 = sqrt(r_0 / b_0) it is
the straight line r_0 = T^2 b_0 in the first map, and does not depend on b_ds_0 in the second.
Circles: trained nets probed on fresh data, coloured with the same scale (measured value).
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np

from figures._common import caption, config_record, progress, run_figure
from simulations.experiments.downstream import DownstreamConfig, run_downstream
from theory import downstream as theory

NAME = "downstream_phase"
PANELS = ("strength", "downstream_ratio", "weight_decay")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Base features, map ranges and spot checks (x = r_0 in every panel).

    Attributes:
        pos_cov, second_moment: base (a, b); target 0 (r = 0.5, b = 0.7), others' threshold
            T = 1.047 on the target's post weight.
        ridge: probe penalty.
        invariance_range: r_0 range (x axis).
        strength_range, ratio_range: b_0 and b_ds_0 / b_0 ranges (log y axes).
        wd_max: top of the weight-decay map.
        init_scale: balanced init for the weight-decay panel (above every unstable root: basin of
            the stable root up to each feature's survival threshold).
        resolution: map points per axis.
        spots_*: simulated (r_0, y) points per panel (kept away from basin thresholds).
        n_train, n_test: probe samples.
        seed: root seed.
    """

    pos_cov: tuple[float, ...] = (0.35, 0.9, 0.5)
    second_moment: tuple[float, ...] = (0.7, 1.0, 0.6)
    ridge: float = 0.1
    invariance_range: tuple[float, float] = (0.02, 1.0)
    strength_range: tuple[float, float] = (0.1, 10.0)
    ratio_range: tuple[float, float] = (0.1, 10.0)
    wd_max: float = 1.4
    init_scale: float = 1.5
    resolution: int = 200
    spots_strength: tuple[tuple[float, float], ...] = ((0.1, 0.3), (0.8, 0.2), (0.9, 1.5), (0.3, 3.0), (0.5, 0.5),
                                                       (0.2, 0.15), (0.6, 5.0), (0.95, 0.4))
    spots_downstream_ratio: tuple[tuple[float, float], ...] = ((0.2, 0.2), (0.95, 3.0), (0.5, 1.0), (0.9, 0.3),
                                                               (0.1, 5.0), (0.7, 2.0))
    spots_weight_decay: tuple[tuple[float, float], ...] = ((0.3, 0.1), (0.95, 0.7), (0.6, 0.3), (0.9, 0.1),
                                                           (0.8, 0.5), (0.2, 0.05), (0.7, 1.0), (0.95, 1.0))
    n_train: int = 20_000
    n_test: int = 100_000
    seed: int = 0

    @classmethod
    def quick(cls) -> Config:
        return cls(resolution=80, spots_strength=cls.spots_strength[:3],
                   spots_downstream_ratio=cls.spots_downstream_ratio[:2],
                   spots_weight_decay=cls.spots_weight_decay[:3], n_train=5_000, n_test=20_000)


def _moments(config, panel, r, y):
    """(a, b, b_ds, weight_decay) on a grid of r (x) and the panel's y (broadcast)."""
    if panel == "strength":
        a, b, b_ds = theory.target_knobs(config.pos_cov, config.second_moment, 0, invariance=r, strength=y)
        return a, b, b_ds, 0.0
    if panel == "downstream_ratio":
        a, b, b_ds = theory.target_knobs(config.pos_cov, config.second_moment, 0, invariance=r, downstream_ratio=y)
        return a, b, b_ds, 0.0
    a, b, b_ds = theory.target_knobs(config.pos_cov, config.second_moment, 0, invariance=r + 0 * y)
    return a, b, b_ds, y


def compute(config: Config):
    """Closed-form maps, derived-boundary margins and simulated spot checks."""
    n = config.resolution
    r = np.linspace(*config.invariance_range, n)
    ys = {"strength": np.geomspace(*config.strength_range, n), "downstream_ratio": np.geomspace(*config.ratio_range, n),
          "weight_decay": np.linspace(0.0, config.wd_max, n)}
    arrays, record = {"invariance": r}, {"config": config_record(config), "seed": config.seed}
    agreement, residual_saddles = {}, 0
    for panel in PANELS:
        y = ys[panel]
        a, b, b_ds, wd = _moments(config, panel, r[None, :], y[:, None])
        init = config.init_scale if panel == "weight_decay" else None
        gap = theory.pre_minus_post(a, b, 0, config.ridge, downstream_second_moment=b_ds, weight_decay=wd,
                                    init_scale=init)
        w = theory.feature_layer_weights(a, b, 2, weight_decay=wd, init_scale=init)[-1]
        threshold = theory.pre_advantage_threshold(w, b_ds, 0)
        live = (w[..., 0] > 0) & np.isfinite(threshold)  # else a tie: dead target or no other feature
        with np.errstate(divide="ignore"):
            margin = np.where(live, np.log(np.where(live, threshold, 1.0)) - np.log(np.where(live, w[..., 0], 1.0)),
                              np.nan)
        condition = theory.pre_beats_post(w, b_ds, 0)
        decided = gap != 0
        agreement[panel] = float(np.mean(condition[decided] == (gap[decided] < 0)))
        arrays[f"{panel}_y"], arrays[f"{panel}_gap"], arrays[f"{panel}_margin"] = y, gap, margin
        arrays[f"{panel}_target_dead"] = w[..., 0] == 0
        # Cells where the aligned per-feature basin is a saddle of the full network: the maps (and
        # w) follow the escape of randomly oriented training there (stable_end_weights).
        w_basin = theory.feature_layer_weights(a, b, 2, weight_decay=wd, init_scale=init, escape=False)[-1]
        arrays[f"{panel}_escaped"] = theory.basin_is_saddle(a, b, w_basin)
        residual_saddles += int(np.sum(theory.basin_is_saddle(a, b, w)))
    runs = [(panel, spot) for panel in PANELS for spot in getattr(config, f"spots_{panel}")]
    measured, predicted = {panel: [] for panel in PANELS}, {panel: [] for panel in PANELS}
    for panel, (r0, y0) in progress(runs, desc=NAME):
        a, b, b_ds, wd = _moments(config, panel, np.asarray(r0), np.asarray(y0))
        init = config.init_scale if panel == "weight_decay" else 0.3
        result = run_downstream(DownstreamConfig(pos_cov=tuple(a), second_moment=tuple(b), target=0,
                                                 downstream_second_moment=tuple(b_ds), ridge=config.ridge,
                                                 weight_decay=float(wd), init_scale=init, n_train=config.n_train,
                                                 n_test=config.n_test, seed=config.seed))
        measured[panel].append(result.pre.measured - result.post.measured)
        predicted[panel].append(result.pre.predicted - result.post.predicted)
    for panel in PANELS:
        arrays[f"{panel}_spots"] = np.asarray(getattr(config, f"spots_{panel}"))
        arrays[f"{panel}_spot_measured"] = np.asarray(measured[panel])
        arrays[f"{panel}_spot_predicted"] = np.asarray(predicted[panel])
    errors = {panel: float(np.max(np.abs(arrays[f"{panel}_spot_measured"] - arrays[f"{panel}_spot_predicted"])))
              for panel in PANELS}
    w_others = np.sqrt(np.asarray(config.pos_cov[1:])) / np.asarray(config.second_moment[1:])
    record.update({"escaped_cells": int(sum(arrays[f"{panel}_escaped"].sum() for panel in PANELS)),
                   "residual_saddle_cells": residual_saddles,
                   "condition_agrees_with_risks": agreement, "max_abs_error_of_gap": errors,
                   "others_threshold": float(np.sum(np.asarray(config.second_moment[1:]) * w_others**2)
                                             / np.sum(np.asarray(config.second_moment[1:]) * w_others))})
    print(f"{NAME}: condition vs risks {agreement}; max |measured - predicted| gap {errors}", file=sys.stderr)
    return arrays, record


def plot(arrays, record):
    """Three heat maps with the derived boundary and simulated spots."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import SymLogNorm

    config = record["config"]
    r = arrays["invariance"]
    extent = max(float(np.max(np.abs(arrays[f"{panel}_gap"]))) for panel in PANELS)
    # Symmetric log scale: most of each map is within +-0.05 of a tie, the corners reach +-0.7.
    norm = SymLogNorm(linthresh=1e-2, linscale=0.5, vmin=-extent, vmax=extent, base=10)
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.6))
    labels = {"strength": ("target pretraining strength $b_0$", "log"),
              "downstream_ratio": ("target downstream strength $b^{ds}_0 / b_0$", "log"),
              "weight_decay": (f"pretraining weight decay (balanced init {config['init_scale']})", "linear")}
    for ax, panel in zip(axes, PANELS):
        y, gap = arrays[f"{panel}_y"], arrays[f"{panel}_gap"]
        mesh = ax.pcolormesh(r, y, gap, cmap="RdBu_r", norm=norm, shading="auto")
        ax.contour(r, y, arrays[f"{panel}_margin"], levels=[0.0], colors="k", linewidths=1.6)
        dead = arrays[f"{panel}_target_dead"].astype(float)
        if dead.any():
            ax.contourf(r, y, dead, levels=[0.5, 1.5], colors="none", hatches=["//"])
            ax.contour(r, y, dead, levels=[0.5], colors="0.3", linewidths=0.8, linestyles="--")
        escaped = arrays[f"{panel}_escaped"].astype(float)
        if escaped.any():  # the aligned basin is a saddle there; the map follows the escape
            ax.contourf(r, y, escaped, levels=[0.5, 1.5], colors="none", hatches=["xx"])
        spots = arrays[f"{panel}_spots"]
        ax.scatter(spots[:, 0], spots[:, 1], c=arrays[f"{panel}_spot_measured"], cmap="RdBu_r", norm=norm, s=90,
                   edgecolors="k", linewidths=1.2, zorder=3)
        label, scale = labels[panel]
        ax.set_yscale(scale)
        ax.set_xlabel("target invariance $r_0 = a_0 / b_0$")
        ax.set_ylabel(label)
        ax.set_title(f"max |measured - predicted| at the spots: {record['max_abs_error_of_gap'][panel]:.1e}",
                     fontsize=9)
    fig.subplots_adjust(left=0.05, right=0.9, top=0.9, bottom=0.24, wspace=0.25)
    colorbar = fig.colorbar(mesh, cax=fig.add_axes([0.915, 0.24, 0.012, 0.66]))
    colorbar.set_label("MSE$_{pre}$ - MSE$_{post}$   (blue: pre wins; symmetric log scale)")
    fig.suptitle("Where pre beats post: closed-form maps, derived boundary (black), trained nets (circles); "
                 f"depth 2, ridge {config['ridge']}, target feature 0", fontsize=11)
    agreement = ", ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in record["condition_agrees_with_risks"].items())
    caption(fig, f"Others: a = {tuple(config['pos_cov'][1:])}, b = {tuple(config['second_moment'][1:])}, threshold "
                 f"T = {record['others_threshold']:.3f}. Pre wins iff w_0 = sqrt(r_0 / b_0) < T: left of the line "
                 "r_0 = T^2 b_0 (left), independent of the downstream strength (middle; it only scales the gap). "
                 "Right: weight decay shrinks the weakest features first and kills them at their survival "
                 "thresholds (the boundary jumps there); hatched //: the target is dead (tie, both MSE = 1); "
                 f"cross-hatched (if any; {record['escaped_cells']} cells): the per-feature basin is a saddle of "
                 "the full network, and the map follows where randomly oriented training escapes to "
                 "(theory.weight_decay.stable_end_weights; "
                 f"{record['residual_saddle_cells']} predicted states left at a saddle). Fraction "
                 f"of decided map cells where the condition matches the risks: {agreement}.", width=175)
    return fig


def main(argv=None) -> int:
    return run_figure(NAME, __doc__, Config, compute, plot, argv)


if __name__ == "__main__":
    sys.exit(main())
