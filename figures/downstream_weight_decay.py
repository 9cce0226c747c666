"""Weight decay and the pre-projection advantage: closed form (basin, escape, global minimum) vs training.

Run:  python -m figures.downstream_weight_decay [--quick] [--out DIR] [--redraw]
Expected runtime: ~35 s on 2 CPU cores (about 15 s of it compilation); --quick ~20 s.

Pretraining weight decay wd (penalty wd/2 sum ||W_l||^2) shrinks each feature's end-to-end weight
along the stable root of 4 v (a - b^2 v^2) = wd (depth 2, v = sigma^2 = s) until the root
disappears at the survival threshold g_max = 8 a^(3/2) / (3^(3/2) b); the weakest features
(smallest a^(3/2) / b) shrink first and fastest. Where gradient flow ends depends on the
initialization: from above the unstable root (here a balanced init of per-layer scale 1.5) a
feature follows the stable root up to g_max; from a small init (0.1) it dies as soon as its
unstable root passes the init, at wd ~ 4 a eps^2; the global minimum drops it already at the
global threshold 2^(1/2) g_max / 2. Where that per-feature basin state is a saddle of the full
network (shaded), randomly oriented training escapes it and the lines follow the escape
(theory.weight_decay.stable_end_weights). The pre advantage MSE_post - MSE_pre of the ridge probe follows
from the resulting weights (theory.downstream); markers are trained nets probed on fresh data.
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np

from figures._common import caption, config_record, feature_colors, progress, run_figure
from simulations.experiments.downstream import DownstreamConfig, run_downstream
from theory import downstream as theory
from theory import weight_decay as wd_theory

NAME = "downstream_weight_decay"
#: Trained vs predicted end-to-end weights beyond this mean the net ended in another state than the
#: prediction (basin plus escape; converged flows otherwise agree to ~1e-4).
WEIGHT_MISMATCH = 1e-2


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Features, targets, weight-decay grids and the two initializations.

    Attributes:
        pos_cov, second_moment: (a, b) per feature (r = 0.9, 0.83, 0.4; post weights 0.95, 1.18,
            0.45).
        targets: downstream targets, one panel each (2: pre wins at wd = 0; 0: post wins).
        ridge: probe penalty.
        large_init, small_init: per-layer scales of the balanced init (above / below the unstable
            roots for most wd).
        wd_max: right end of the theory grid.
        sim_wd_large, sim_wd_small: weight decays simulated from each init (kept >= 2% away from
            every threshold, where the basin flips).
        n_train, n_test: probe samples.
        seed: root seed.
    """

    pos_cov: tuple[float, ...] = (0.9, 0.5, 0.8)
    second_moment: tuple[float, ...] = (1.0, 0.6, 2.0)
    targets: tuple[int, ...] = (2, 0)
    ridge: float = 0.1
    large_init: float = 1.5
    small_init: float = 0.1
    wd_max: float = 1.5
    sim_wd_large: tuple[float, ...] = (0.0, 0.003, 0.03, 0.1, 0.2, 0.3, 0.4, 0.5, 0.54, 0.6, 0.7, 0.8, 1.0, 1.2)
    sim_wd_small: tuple[float, ...] = (0.003, 0.01, 0.03, 0.1)
    n_train: int = 20_000
    n_test: int = 100_000
    seed: int = 0

    @classmethod
    def quick(cls) -> Config:
        return cls(sim_wd_large=(0.0, 0.1, 0.3, 0.5, 0.7), sim_wd_small=(0.01, 0.1), n_train=5_000, n_test=20_000)


def _theory_grid(config):
    a, b = np.asarray(config.pos_cov), np.asarray(config.second_moment)
    grid = np.geomspace(1e-4, config.wd_max, 600)
    # Resolve the jumps: points just below and above every threshold of every feature.
    thresholds = np.concatenate([wd_theory.survival_threshold(a, b, 2), wd_theory.global_threshold(a, b, 2),
                                 4 * config.small_init**2 * (a - b**2 * config.small_init**4)])
    edges = np.concatenate([thresholds * (1 - 1e-9), thresholds * (1 + 1e-9)])
    return np.unique(np.concatenate([[0.0], grid, edges[(edges > 0) & (edges < config.wd_max)]]))


def compute(config: Config):
    """Closed-form advantage and weights on a fine wd grid; trained nets at the simulated wd."""
    a, b = np.asarray(config.pos_cov), np.asarray(config.second_moment)
    wd = _theory_grid(config)
    schemes = {"large": config.large_init, "small": config.small_init, "global": None}
    arrays = {"wd": wd, "pos_cov": a, "second_moment": b, "targets": np.asarray(config.targets)}
    summary = {}
    for name, init in schemes.items():
        weights = theory.feature_layer_weights(a, b, 2, weight_decay=wd, init_scale=init)  # (3, wd, d)
        arrays[f"weights_{name}"] = weights[-1]
        if init is not None:  # where the aligned basin is a saddle, the prediction follows the escape
            basin = theory.feature_layer_weights(a, b, 2, weight_decay=wd, init_scale=init, escape=False)[-1]
            arrays[f"escaped_{name}"] = theory.basin_is_saddle(a, b, basin)
            arrays[f"basin_{name}"] = basin
        for target in config.targets:
            risks = theory.probe_risk(weights, b, target, config.ridge)  # (3, wd)
            advantage = risks[2] - risks[1]
            arrays[f"advantage_{name}_{target}"] = advantage
            alive = weights[-1][:, target] > 0
            best, worst = int(np.argmax(advantage)), int(np.argmin(advantage))
            sign = np.sign(np.where(alive, advantage, 0.0))
            flips = np.flatnonzero((sign[1:] != sign[:-1]) & (sign[1:] != 0) & (sign[:-1] != 0))
            summary[f"{name}_target{target}"] = {
                "advantage_at_0": float(advantage[0]),
                "max_advantage": float(advantage[best]), "argmax_wd": float(wd[best]),
                "min_advantage": float(advantage[worst]), "argmin_wd": float(wd[worst]),
                "sign_changes_at": [float(0.5 * (wd[i] + wd[i + 1])) for i in flips],
                "target_dies_at": float(wd[np.flatnonzero(~alive)[0]]) if np.any(~alive) else None,
            }
    runs = [("large", config.large_init, w) for w in config.sim_wd_large] + \
           [("small", config.small_init, w) for w in config.sim_wd_small]
    sims = {}
    errors, disagreements = [], []
    for name, init, weight_decay in progress(runs, desc=NAME):
        for target in config.targets:
            result = run_downstream(DownstreamConfig(pos_cov=config.pos_cov, second_moment=config.second_moment,
                                                     target=target, ridge=config.ridge, weight_decay=weight_decay,
                                                     init_scale=init, n_train=config.n_train,
                                                     n_test=config.n_test, seed=config.seed))
            sims.setdefault(f"sim_advantage_{name}_{target}", []).append(
                result.measured[2] - result.measured[1])
            error = float(np.max(np.abs(result.measured - result.predicted)))
            if result.diagnostics.max_weight_error > WEIGHT_MISMATCH:
                disagreements.append({"init_scale": init, "weight_decay": weight_decay, "target": target,
                                      "probe_error": error,
                                      "measured_weights": result.measured_weights[-1].tolist(),
                                      "predicted_weights": result.predicted_weights[-1].tolist()})
            else:
                errors.append(error)
        sims.setdefault(f"sim_weights_{name}", []).append(result.measured_weights[-1])
    arrays.update({key: np.asarray(value) for key, value in sims.items()})
    arrays["sim_wd_large"], arrays["sim_wd_small"] = np.asarray(config.sim_wd_large), np.asarray(config.sim_wd_small)
    record = {"config": config_record(config), "seed": config.seed, "summary": summary,
              "survival_threshold": wd_theory.survival_threshold(a, b, 2).tolist(),
              "global_threshold": wd_theory.global_threshold(a, b, 2).tolist(),
              "max_abs_error": max(errors), "disagreements": disagreements}
    print(f"{NAME}: max |measured - predicted| {max(errors):.2e} where the trained weights match theory; "
          f"disagreements: {disagreements}; {summary}", file=sys.stderr)
    return arrays, record


def plot(arrays, record):
    """Pre advantage vs wd for each target, and the end-to-end weights vs wd."""
    import matplotlib.pyplot as plt

    config = record["config"]
    targets = [int(t) for t in arrays["targets"]]
    wd = arrays["wd"]
    fig, axes = plt.subplots(1, len(targets) + 1, figsize=(6 * (len(targets) + 1) * 0.85, 6.4))
    styles = {"large": ("tab:blue", "-", f"init {config['large_init']}"),
              "small": ("tab:orange", "-.", f"init {config['small_init']}"),
              "global": ("k", ":", "global minimum")}
    survival, global_ = np.asarray(record["survival_threshold"]), np.asarray(record["global_threshold"])
    for ax, target in zip(axes, targets):
        for name, (color, style, label) in styles.items():
            ax.plot(wd, arrays[f"advantage_{name}_{target}"], color=color, ls=style, lw=1.4, label=f"theory: {label}")
        ax.plot(arrays["sim_wd_large"], arrays[f"sim_advantage_large_{target}"], "o", color="tab:blue", mfc="none",
                ms=8, mew=1.5, label=f"trained, init {config['large_init']}")
        ax.plot(arrays["sim_wd_small"], arrays[f"sim_advantage_small_{target}"], "^", color="tab:orange",
                mfc="none", ms=8, mew=1.5, label=f"trained, init {config['small_init']}")
        for name in ("large", "small"):
            # Shaded: the aligned basin is a saddle of the full network; the lines follow the escape.
            color, label = styles[name][0], styles[name][2]
            ax.fill_between(wd, 0, 1, where=arrays[f"escaped_{name}"], color=color, alpha=0.15, lw=0,
                            transform=ax.get_xaxis_transform(),
                            label=f"basin is a saddle, escape predicted ({label})" if arrays[f"escaped_{name}"].any()
                            else None)
        ax.axhline(0, color="0.6", lw=0.8)
        ax.axvline(survival[target], color="tab:blue", lw=0.8, alpha=0.5)
        ax.axvline(global_[target], color="k", lw=0.8, alpha=0.4, ls=":")
        r = arrays["pos_cov"][target] / arrays["second_moment"][target]
        ax.set_title(f"target {target} (r = {r:.2f}, b = {arrays['second_moment'][target]:g})", fontsize=10)
        ax.set_xscale("symlog", linthresh=1e-3)
        ax.set_xlim(0, wd[-1])
        ax.set_xlabel("pretraining weight decay wd")
        ax.set_ylabel("pre advantage  MSE$_{post}$ - MSE$_{pre}$")
    axes[0].legend(fontsize=7, loc="upper left")
    weights_ax = axes[-1]
    colors = feature_colors(arrays["pos_cov"].size)
    for k, color in enumerate(colors):
        for name, (_, style, _label) in styles.items():
            weights_ax.plot(wd, arrays[f"weights_{name}"][:, k], color=color, ls=style, lw=1.2,
                            label=f"feature {k}" if name == "large" else None)
        weights_ax.plot(arrays["sim_wd_large"], arrays["sim_weights_large"][:, k], "o", color=color, mfc="none", ms=7)
        weights_ax.plot(arrays["sim_wd_small"], arrays["sim_weights_small"][:, k], "^", color=color, mfc="none", ms=7)
    weights_ax.set_xscale("symlog", linthresh=1e-3)
    weights_ax.set_xlim(0, wd[-1])
    weights_ax.set_xlabel("pretraining weight decay wd")
    weights_ax.set_ylabel("end-to-end (post) weight $s_k$")
    weights_ax.set_title(f"weights: solid init {config['large_init']}, dash-dot {config['small_init']}, "
                         "dotted global min.", fontsize=10)
    weights_ax.legend(fontsize=7)
    fig.suptitle("Weight decay and the pre-projection advantage (depth 2, ridge "
                 f"{config['ridge']}); vertical lines: survival (blue) and global (dotted) thresholds of the target",
                 fontsize=10)
    fig.subplots_adjust(left=0.06, right=0.99, top=0.9, bottom=0.33, wspace=0.28)
    summary = record["summary"]
    parts = []
    for target in targets:
        s = summary[f"large_target{target}"]
        g = summary[f"global_target{target}"]
        flips = ", ".join(f"{v:.3g}" for v in s["sign_changes_at"]) or "none"
        parts.append(f"target {target}: advantage {s['advantage_at_0']:.4f} at wd = 0; "
                     f"from init {config['large_init']} "
                     f"it ranges over [{s['min_advantage']:.4f}, {s['max_advantage']:.4f}] (extremes at wd = "
                     f"{s['argmin_wd']:.3g}, {s['argmax_wd']:.3g}), changes sign at wd = {flips}, and is 0 once the "
                     f"target dies at wd = {s['target_dies_at']:.3g} (global minimum: {g['target_dies_at']:.3g})")
    caption(fig, "; ".join(parts) + ". Non-monotone: weaker features shrink first (to 1/sqrt(3) of their wd = 0 "
            "weight at the fold), so the gap drifts smoothly, jumps whenever another feature dies, and vanishes "
            "(both layers MSE = 1) when the target dies (and ties when it is the only live feature). "
            f"From init {config['small_init']} a feature dies once "
            f"wd > 4 eps^2 (a - b^2 eps^4) (0.020-0.036 here). Max |measured - predicted| probe MSE where the "
            f"trained weights match theory: {record['max_abs_error']:.1e}." + _disagreement_text(record), width=165)
    return fig


def _disagreement_text(record) -> str:
    runs = record.get("disagreements", [])
    if not runs:
        return ""
    places = sorted({(r["init_scale"], r["weight_decay"]) for r in runs})
    first = runs[0]
    return (" DISAGREEMENT at (init, wd) = " + ", ".join(f"({i:g}, {w:g})" for i, w in places)
            + ": the prediction (per-feature basin plus escape from its saddles) gives end-to-end weights "
            + str(np.round(first["predicted_weights"], 3).tolist()) + " but training gives "
            + str(np.round(first["measured_weights"], 3).tolist()) + ".")


def main(argv=None) -> int:
    return run_figure(NAME, __doc__, Config, compute, plot, argv)


if __name__ == "__main__":
    sys.exit(main())
