"""Progressive weighting: every layer's per-feature weight, trained deep linear nets vs theory.

Run:  python -m figures.weighting_layers [--quick] [--out DIR] [--redraw]
Expected runtime: ~18 s on 2 CPU cores, cold compilation cache (two compilations, depth 2 and 4);
--quick ~13 s.

Balanced gradient flow on the population spectral loss ends at P_l^T P_l = G^(l/L), so feature i
has weight w_i^(l/L) at layer l of L, with w_i = sqrt(a_i) / b_i its end-to-end weight: ratios
between features are raised to the power l/L. Two layers: pre weight = sqrt(post weight).
Simulations (markers) are run_weighting from exactly balanced, randomly oriented init; theory
(lines) is theory.linear.layer_weights.
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np

from figures._common import caption, config_record, feature_colors, progress, run_figure
from simulations.experiments.weighting import WeightingConfig, run_weighting, to_record
from theory import linear as linear_theory

NAME = "weighting_layers"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Features (a_i, b_i) with distinct invariance ratios r = a / b and strengths b.

    Attributes:
        pos_cov: a_i per feature.
        second_moment: b_i per feature.
        depths: network depths to train (each one compiles once).
        init_scale: per-layer singular value of the balanced init (exact at any scale, so large
            enough to skip the long small-init plateaus).
        seeds: initialization seeds per depth.
    """

    # r = 0.95, 0.5, 0.8, 0.3, 0.6, 0.2, 0.05; post weights sqrt(a)/b spread from 1.95 to 0.25.
    pos_cov: tuple[float, ...] = (0.2375, 0.2, 0.8, 0.18, 1.2, 0.3, 0.04)
    second_moment: tuple[float, ...] = (0.25, 0.4, 1.0, 0.6, 2.0, 1.5, 0.8)
    depths: tuple[int, ...] = (2, 4)
    init_scale: float = 0.5
    seeds: tuple[int, ...] = (0, 1)

    @classmethod
    def quick(cls) -> Config:
        return cls(seeds=(0,))


def compute(config: Config):
    """Train every (depth, seed) and tabulate measured and predicted layer weights."""
    runs = [(depth, seed) for depth in config.depths for seed in config.seeds]
    max_depth = max(config.depths)
    d = len(config.pos_cov)
    # (depth index, seed index, layer, feature); layers beyond a net's depth are nan.
    measured = np.full((len(config.depths), len(config.seeds), max_depth, d), np.nan)
    predicted = np.full((len(config.depths), max_depth, d), np.nan)
    diagnostics = []
    for depth, seed in progress(runs, desc=NAME):
        result = run_weighting(WeightingConfig(pos_cov=config.pos_cov, second_moment=config.second_moment,
                                               depth=depth, init_scale=config.init_scale, seed=seed))
        i, j = config.depths.index(depth), config.seeds.index(seed)
        measured[i, j, :depth] = result.measured
        predicted[i, :depth] = result.predicted
        diagnostics.append({"depth": depth, "seed": seed, **to_record(result.diagnostics)})
    # Theory as a continuous function of the layer fraction q = l / L: w_i^q.
    fractions = np.linspace(0.0, 1.0, 101)
    end_to_end = linear_theory.end_to_end_weights(config.pos_cov, config.second_moment)
    curves = end_to_end[None, :] ** fractions[:, None]
    relative = np.abs(measured - predicted[:, None]) / predicted[:, None]
    max_error = {f"depth_{depth}": float(np.nanmax(relative[i])) for i, depth in enumerate(config.depths)}
    print(f"{NAME}: max relative error {max_error}", file=sys.stderr)
    arrays = {"depths": np.asarray(config.depths), "seeds": np.asarray(config.seeds), "measured": measured,
              "predicted": predicted, "fractions": fractions, "theory_curves": curves,
              "pos_cov": np.asarray(config.pos_cov), "second_moment": np.asarray(config.second_moment)}
    record = {"config": config_record(config), "seed": list(config.seeds), "diagnostics": diagnostics,
              "max_relative_error": max_error}
    return arrays, record


def plot(arrays, record):
    """Left: weight vs l/L (log y) for every depth; right: layer-l vs last-layer weight (log-log)."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedLocator, FormatStrFormatter, NullFormatter

    depths, measured, predicted = arrays["depths"], arrays["measured"], arrays["predicted"]
    a, b = arrays["pos_cov"], arrays["second_moment"]
    colors = feature_colors(a.size)
    markers = ["o", "s", "^", "D"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5.4))

    for i, color in enumerate(colors):
        left.plot(arrays["fractions"], arrays["theory_curves"][:, i], color=color, lw=1.2,
                  label=f"r={a[i] / b[i]:.2f}, b={b[i]:g}")
    for k, depth in enumerate(depths):
        layers = np.arange(1, depth + 1)
        for i, color in enumerate(colors):
            for j in range(measured.shape[1]):
                left.plot(layers / depth, measured[k, j, :depth, i], ls="none", marker=markers[k % 4],
                          mfc="none" if j else color, mec=color, ms=8 - 2 * k, zorder=3)
    left.set_yscale("log")
    left.set_xlabel("layer fraction l / L   (0 = input, 1 = last layer)")
    left.set_ylabel(r"weight of feature $i$ at layer $l$:  $\|P_l e_i\|$")
    left.set_title("lines: theory $(\\sqrt{a_i}/b_i)^{l/L}$;  markers: trained nets", fontsize=10)
    feature_legend = left.legend(fontsize=7, ncol=2, title="feature (r = a/b, b)", title_fontsize=8,
                                 loc="upper left")
    left.add_artist(feature_legend)
    shapes = [Line2D([], [], ls="none", marker=markers[k % 4], color="0.3", label=f"depth {depth}")
              for k, depth in enumerate(depths)]
    left.legend(handles=shapes, fontsize=8, loc="lower left")

    # Right: layer l against the last layer; theory is the power law y = x^(l/L).
    positive = predicted[np.isfinite(predicted) & (predicted > 0)]
    x_line = np.geomspace(positive.min() * 0.8, positive.max() * 1.25, 50)
    line_styles, handles, drawn = ["-", "--", ":", "-."], [], {}
    for k, depth in enumerate(depths):
        for layer in range(1, depth):
            key = (layer // np.gcd(layer, depth), depth // np.gcd(layer, depth))
            if key not in drawn:
                label = "theory: pre = sqrt(post)" if key == (1, 2) else f"theory: $x^{{{key[0]}/{key[1]}}}$"
                drawn[key] = right.plot(x_line, x_line ** (layer / depth), color="0.45", lw=1,
                                        ls=line_styles[len(drawn) % 4], label=label)[0]
                handles.append(drawn[key])
            for j in range(measured.shape[1]):
                right.scatter(measured[k, j, depth - 1], measured[k, j, layer - 1], c=colors,
                              marker=markers[k % 4], s=44 - 14 * k, zorder=3)
    handles += [Line2D([], [], ls="none", marker=markers[k % 4], color="0.3",
                       label=f"depth {depth}, layer 1" if depth == 2 else f"depth {depth}, layers 1..{depth - 1}")
                for k, depth in enumerate(depths)]
    right.set_xscale("log")
    right.set_yscale("log")
    for axis in (right.xaxis, right.yaxis, left.yaxis):
        axis.set_major_locator(FixedLocator([0.25, 0.5, 1.0, 2.0]))
        axis.set_major_formatter(FormatStrFormatter("%g"))
        axis.set_minor_formatter(NullFormatter())
    right.set_xlabel("last-layer (post) weight  $w_i = \\sqrt{a_i}/b_i$")
    right.set_ylabel("layer-$l$ weight")
    right.set_title("layer $l$ vs last layer: slope l/L on log-log axes", fontsize=10)
    right.legend(handles=handles, fontsize=7, loc="upper left")

    errors = record["max_relative_error"]
    fig.suptitle("Progressive weighting across layers: feature ratios are raised to the power l/L "
                 "(balanced init, spectral loss, gradient flow)", fontsize=11)
    fig.subplots_adjust(left=0.08, right=0.98, top=0.9, bottom=0.2, wspace=0.25)
    caption(fig, "Each trained deep linear net (markers; filled = seed 0, open = other seeds) is measured at "
                 "every layer; lines are theory.linear.layer_weights. Two layers: pre weight = sqrt(post "
                 "weight); earlier layers weight the features more evenly. Max relative error "
                 + ", ".join(f"{k.replace('_', ' ')}: {v:.1e}" for k, v in errors.items())
                 + f". Init: exactly balanced, random orientation, per-layer scale "
                 f"{record['config']['init_scale']}.")
    return fig


def main(argv=None) -> int:
    return run_figure(NAME, __doc__, Config, compute, plot, argv)


if __name__ == "__main__":
    sys.exit(main())
