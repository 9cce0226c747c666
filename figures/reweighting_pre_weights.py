"""Fixed reweighting head: pre-head weights against k, trained linear encoders over the rank rule.

Run:  python -m figures.reweighting_pre_weights [--quick] [--out DIR] [--redraw]
Expected runtime: ~10 s on 2 CPU cores (one compilation, d = 4; the 30 flows solved point by point
on both cores); --quick ~8 s.

A one-layer linear encoder W (width d) behind the frozen head D_k = diag(1, 1/k, 1/k^2, ...) is
trained by gradient flow on the population spectral loss of D_k W x from small, randomly oriented
init. Post-head weights ||D_k W e_i|| are sqrt(a_i)/b_i for every k (the loss fixes them);
pre-head weights ||W e_i|| follow the rank rule k^n sqrt(a_i)/b_i (n = rank of r_i = a_i/b_i,
theory.reweighting) only in the small-init limit. Left: one problem, weights against k at two init
scales (markers) over the rule (lines). Right: the rule's relative error on random problems
(equal ratio gaps, b ~ U(0.5, 2)) at init 1e-4 against the exchange margin.
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np

from figures._common import caption, config_record, feature_colors, run_figure
from simulations.experiment import point
from simulations.experiments.reweighting import ReweightingConfig, run_batch
from theory import reweighting as reweighting_theory

NAME = "reweighting_pre_weights"


def random_problem(seed: int, dim: int, gap: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(a, b): b ~ U(0.5, 2), ratios 0.95, 0.95 - gap, ... in random order (every gap = ``gap``)."""
    rng = np.random.default_rng(seed)
    b = rng.uniform(0.5, 2.0, dim)
    r = rng.permutation(0.95 - gap * np.arange(dim))
    return tuple(r * b), tuple(b)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Left panel: one problem at every k; right panel: random problems at fewer k.

    Attributes:
        pos_cov, second_moment: the left panel's problem (r = 0.95, 0.85, 0.65, 0.45; a and r in
            different orders, so the flow has to exchange features between coordinates).
        kappas: k values of the left panel.
        init_scales: init scales of the left panel (one marker style each).
        sweep_kappas: k values of the right panel.
        sweep_init_scale: init scale of the right panel (1e-4, the small-init regime).
        gaps: gaps between consecutive ratios of the random problems.
        problems: random problems (seeds of random_problem) per (gap, k).
        seed: initialization seed.
    """

    pos_cov: tuple[float, ...] = (0.76, 1.02, 0.325, 0.72)
    second_moment: tuple[float, ...] = (0.8, 1.2, 0.5, 1.6)
    kappas: tuple[float, ...] = (1.0, 1.05, 1.2, 1.5, 2.0, 3.0)
    init_scales: tuple[float, ...] = (1e-4, 1e-10)
    sweep_kappas: tuple[float, ...] = (1.5, 2.0, 3.0)
    sweep_init_scale: float = 1e-4
    gaps: tuple[float, ...] = (0.1, 0.2)
    problems: tuple[int, ...] = (0, 1, 2)
    seed: int = 0

    @classmethod
    def quick(cls) -> Config:
        return cls(kappas=(1.0, 2.0, 3.0), init_scales=(1e-4,), sweep_kappas=(2.0, 3.0), gaps=(0.1,),
                   problems=(0, 1))


def _relative_error(result) -> float:
    measured, predicted = result.pre.measured, result.pre.predicted
    learned = predicted > 0
    return float(np.max(np.abs(measured[learned] / predicted[learned] - 1.0)))


def compute(config: Config):
    """Train every point (one vmapped solve per panel) and tabulate pre/post weights and errors."""
    d = len(config.pos_cov)
    left = [ReweightingConfig(pos_cov=config.pos_cov, second_moment=config.second_moment, kappa=k,
                              init_scale=eps, seed=0)
            for eps in config.init_scales for k in config.kappas]
    sweep = [(gap, k, p) for gap in config.gaps for k in config.sweep_kappas for p in config.problems]
    right = [ReweightingConfig(pos_cov=random_problem(p, d, gap)[0], second_moment=random_problem(p, d, gap)[1],
                               kappa=k, init_scale=config.sweep_init_scale, seed=config.seed)
             for gap, k, p in sweep]
    # One vmapped solve for both panels (one compilation); the flow time is set by the slowest point.
    batch = run_batch(left + right)
    results = [point(batch, index) for index in range(len(left + right))]
    left_results, right_results = results[:len(left)], results[len(left):]
    shape = (len(config.init_scales), len(config.kappas), d)
    pre = np.array([r.pre.measured for r in left_results]).reshape(shape)
    post = np.array([r.post.measured for r in left_results]).reshape(shape)
    kappa_grid = np.linspace(1.0, max(config.kappas), 121)
    theory_pre = np.array([reweighting_theory.fixed_head_weights(config.pos_cov, config.second_moment, k).pre
                           for k in kappa_grid])
    theory_post = reweighting_theory.fixed_head_weights(config.pos_cov, config.second_moment, 1.0).post
    errors = np.array([_relative_error(r) for r in right_results])
    margins = np.array([reweighting_theory.exchange_margin(c.pos_cov, c.second_moment, c.kappa) for c in right])
    post_error = max(float(np.max(np.abs(r.post.measured[r.post.predicted > 0]
                                         / r.post.predicted[r.post.predicted > 0] - 1)))
                     for r in left_results + right_results)
    converged = all(r.diagnostics.converged for r in left_results + right_results)
    left_errors = np.array([_relative_error(r) for r in left_results]).reshape(shape[:2])
    print(f"{NAME}: post max rel error {post_error:.1e}; converged {converged}; rank-rule error by margin "
          f"{sorted(zip(np.round(margins, 2).tolist(), np.round(errors, 5).tolist()))}", file=sys.stderr)
    arrays = {"kappas": np.asarray(config.kappas), "init_scales": np.asarray(config.init_scales),
              "pre_measured": pre, "post_measured": post, "kappa_grid": kappa_grid, "theory_pre": theory_pre,
              "theory_post": theory_post, "left_errors": left_errors,
              "sweep": np.asarray(sweep, dtype=float), "sweep_errors": errors, "sweep_margins": margins,
              "pos_cov": np.asarray(config.pos_cov), "second_moment": np.asarray(config.second_moment)}
    record = {"config": config_record(config), "seed": config.seed, "post_max_relative_error": post_error,
              "all_converged": converged, "left_errors": left_errors.tolist(),
              "sweep_points": [{"gap": g, "kappa": k, "problem": p, "margin": float(m), "error": float(e)}
                               for (g, k, p), m, e in zip(sweep, margins, errors)],
              "steps_max": int(max(r.diagnostics.steps for r in left_results + right_results))}
    return arrays, record


def plot(arrays, record):
    """Left: weights vs k (log y); right: worst/median relative error of the rank rule vs k (log y)."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    a, b = arrays["pos_cov"], arrays["second_moment"]
    colors = feature_colors(a.size)
    ranks = reweighting_theory.feature_ranks(a, b)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12.5, 5.6))
    markers = ["o", "s", "^"]
    for i, color in enumerate(colors):
        left.plot(arrays["kappa_grid"], arrays["theory_pre"][:, i], color=color, lw=1.3,
                  label=f"r={a[i] / b[i]:.2f}, a={a[i]:.2f}: rank {ranks[i]}")
        left.axhline(arrays["theory_post"][i], color=color, lw=0.8, ls=":")
        for e in range(len(arrays["init_scales"])):
            left.plot(arrays["kappas"], arrays["pre_measured"][e, :, i], ls="none", marker=markers[e % 3],
                      mfc=color if e == 0 else "none", mec=color, ms=7 - e, zorder=3)
            left.plot(arrays["kappas"], arrays["post_measured"][e, :, i], ls="none", marker="x", color=color,
                      ms=5, zorder=3)
    left.set_yscale("log")
    left.set_xlabel("head ratio k   (g(h) = diag(1, 1/k, 1/k^2, ...) h)")
    left.set_ylabel("per-feature weight")
    left.set_title("lines: rank rule $k^n\\sqrt{a_i}/b_i$ (pre), dotted: $\\sqrt{a_i}/b_i$ (post)", fontsize=10)
    feature_legend = left.legend(fontsize=7, loc="upper left", title="feature", title_fontsize=8)
    left.add_artist(feature_legend)
    handles = [Line2D([], [], ls="none", marker=markers[e % 3], color="0.3", mfc="0.3" if e == 0 else "none",
                      label=f"pre, init {eps:g}") for e, eps in enumerate(arrays["init_scales"])]
    handles.append(Line2D([], [], ls="none", marker="x", color="0.3", label="post (both inits)"))
    left.legend(handles=handles, fontsize=8, loc="lower right")

    errors, margins, sweep = arrays["sweep_errors"], arrays["sweep_margins"], arrays["sweep"]
    floor = 1e-9
    kappas = np.unique(sweep[:, 1])
    gaps = np.unique(sweep[:, 0])
    k_colors = plt.get_cmap("viridis")(np.linspace(0.0, 0.8, kappas.size))
    for g_index, gap in enumerate(gaps):
        for k_index, k in enumerate(kappas):
            sel = (sweep[:, 0] == gap) & (sweep[:, 1] == k)
            right.scatter(margins[sel], np.maximum(errors[sel], floor), color=k_colors[k_index],
                          marker=markers[g_index % 3], s=40, zorder=3, alpha=0.8,
                          label=f"k = {k:g}, ratio gaps {gap:g}")
    for level, text in ((5e-2, "5e-2"), (1e-3, "1e-3")):
        right.axhline(level, color="0.4", lw=0.8, ls=":")
        right.text(0.98, level * 1.15, text, fontsize=7, color="0.3", transform=right.get_yaxis_transform(),
                   ha="right")
    for edge in (0.8, 1.5):
        right.axvline(edge, color="0.6", lw=0.8, ls="--")
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("exchange margin  k^2 min_n (r_n - r_(n+1)) / r_n")
    right.set_ylabel("max_i |measured / rank rule - 1|  (pre-head)")
    right.set_title(f"deviation from the rank rule, random problems, init {record['config']['sweep_init_scale']:g}",
                    fontsize=10)
    right.legend(fontsize=7, loc="lower left")
    fig.suptitle("Fixed reweighting head: post-head weights are the no-head optimum; pre-head weights follow "
                 "the rank rule only in the small-init limit", fontsize=11)
    fig.subplots_adjust(left=0.07, right=0.98, top=0.88, bottom=0.28, wspace=0.22)
    caption(fig, "Linear encoder (width d = 4) behind the frozen head, gradient flow on the population spectral "
                 "loss from randomly oriented balanced init. Post-head weights (x) sit on sqrt(a)/b for every k "
                 f"(max relative error {record['post_max_relative_error']:.1e}). Pre-head weights approach the rank "
                 "rule k^n sqrt(a)/b (n = rank of a/b) as the init shrinks; at finite init the coordinates mix "
                 "(features exchange places when a and a/b rank them differently, or the init's orientation "
                 "favours a lower coordinate), and k near 1 mixes at any init. k = 1 is no head (pre = post). "
                 "Right: the deviation is organised by the exchange margin (theory.reweighting.exchange_margin; "
                 "dashed: 0.8 and 1.5, where it was measured to drop below 5e-2 and 1e-3); the regime k >= 2, "
                 f"ratio gaps >= 0.1 includes margins below 0.5. All flows converged: {record['all_converged']}.")
    return fig


def main(argv=None) -> int:
    return run_figure(NAME, __doc__, Config, compute, plot, argv)


if __name__ == "__main__":
    sys.exit(main())
