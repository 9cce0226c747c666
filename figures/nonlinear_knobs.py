"""How the non-linear effect depends on the flip probability q and on the width (channels per feature).

Run:  python -m figures.nonlinear_knobs [--quick] [--out DIR] [--redraw]
Expected runtime: ~30 s on 2 CPU cores with an empty compilation cache (two compilations), ~15 s
warm; --quick ~20 s.

Left: R^2 of the value x0 of the sign-flipped feature against q (its sign flips with probability
q in each view: E[x0 x0+] = (1 - 2q)^2 s^2). Lines: closed forms without weight decay (ReLU:
theory.relu_diagonal fixed point; linear: theory.downstream.layer_risks). Markers: trained
networks (simulations.experiments.nonlinear) without weight decay (open) and with the default
0.05 (filled). Right: the diagonal ReLU net with g channels per feature (hidden width 3 g,
orientations alternating +, -) at q = 1/2: with g = 1 only relu(+x_j) exists and h cannot hold
x0 linearly; g >= 2 gives both orientations.
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np

from figures._common import caption, config_record, run_figure
from simulations.experiment import run_split
from simulations.experiments import nonlinear
from theory import downstream as linear_downstream
from theory import relu_diagonal as rd

NAME = "nonlinear_knobs"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Sweep grids.

    Attributes:
        flip_probabilities: simulated q values.
        groups: channels per feature of the width sweep.
        seeds: seeds per width.
        theory_points: points per theory line.
        steps: gradient steps.
    """

    flip_probabilities: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.45, 0.5)
    groups: tuple[int, ...] = (1, 2)
    seeds: int = 3
    theory_points: int = 101
    steps: int = 5000

    @classmethod
    def quick(cls) -> Config:
        return cls(flip_probabilities=(0.0, 0.25, 0.5), groups=(1, 2), seeds=2, theory_points=41, steps=2500)


def _r2_value(r2, net, layer):
    return r2[..., nonlinear.NETS.index(net), nonlinear.LAYERS.index(layer), 0, 0]


def compute(config: Config):
    base = nonlinear.NonlinearConfig(steps=config.steps)
    qs = np.asarray(config.flip_probabilities)
    configs = [dataclasses.replace(base, flip_probability=float(q), weight_decay=wd)
               for wd in (0.0, base.weight_decay) for q in qs]
    # The default-width seeds of the right panel join this batch (same shapes: one compilation).
    width_configs = [dataclasses.replace(base, seed=s) for s in range(config.seeds)]
    r2 = run_split(nonlinear.EXPERIMENT, configs + width_configs).r2
    default_width = r2[len(configs):]
    r2_q = r2[:len(configs)].reshape(2, qs.size, *r2.shape[1:])

    q_line = np.linspace(0.0, 0.5, config.theory_points)
    relu_line = np.zeros((q_line.size, 2))
    signs = np.array([[1.0, -1.0]] * base.dim)
    for i, q in enumerate(q_line):
        laws = dataclasses.replace(base, flip_probability=float(q)).laws()
        predicted = rd.predicted_decodability(laws, signs, base.head_width, ridge=base.ridge)
        relu_line[i] = predicted["pre"]["value"][0], predicted["post"]["value"][0]
    a = np.stack([(1 - 2 * q_line) ** 2 * base.flipped_std**2]
                 + [np.full_like(q_line, s**2) for s in base.invariant_stds], axis=1)
    b = np.stack([np.full_like(q_line, base.flipped_std**2)]
                 + [np.full_like(q_line, s**2) for s in base.invariant_stds], axis=1)
    linear_line = 1.0 - linear_downstream.layer_risks(a, b, 0, base.ridge)[1:].T  # (points, [pre, post])

    group_r2, group_theory = [], []
    for g in config.groups:
        if g == base.group:
            group_r2.append(default_width)
        else:
            runs = run_split(nonlinear.EXPERIMENT, [dataclasses.replace(base, group=g, seed=s)
                                                   for s in range(config.seeds)])
            group_r2.append(runs.r2)
        if g <= 2:
            signs_g = np.where(np.arange(g) % 2 == 0, 1.0, -1.0)[None, :].repeat(base.dim, 0)
            predicted = rd.predicted_decodability(base.laws(), signs_g, base.dim * g, ridge=base.ridge)
            group_theory.append([predicted["pre"]["value"][0], predicted["post"]["value"][0]])
        else:
            group_theory.append([np.nan, np.nan])
    arrays = {"q": qs, "r2_q": r2_q, "q_line": q_line, "relu_line": relu_line, "linear_line": linear_line,
              "groups": np.asarray(config.groups), "group_r2": np.stack(group_r2),
              "group_theory": np.asarray(group_theory)}
    print(f"{NAME}: relu pre x0 R^2 by group {_r2_value(arrays['group_r2'], 'relu', 'pre').mean(axis=1)}",
          file=sys.stderr)
    record = {"config": config_record(config), "experiment": dataclasses.asdict(base), "seed": 0}
    return arrays, record


def plot(arrays, record):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    ax = axes[0]
    q, r2_q = arrays["q"], arrays["r2_q"]
    styles = {("relu", "pre"): "tab:blue", ("relu", "post"): "tab:red",
              ("linear", "pre"): "tab:gray", ("linear", "post"): "0.2"}
    ax.plot(arrays["q_line"], arrays["relu_line"][:, 0], "-", color=styles["relu", "pre"],
            label="ReLU pre, closed form")
    ax.plot(arrays["q_line"], arrays["relu_line"][:, 1], "-", color=styles["relu", "post"],
            label="ReLU post, closed form")
    ax.plot(arrays["q_line"], arrays["linear_line"][:, 0], "--", color=styles["linear", "pre"],
            label="linear pre, closed form")
    ax.plot(arrays["q_line"], arrays["linear_line"][:, 1], ":", color=styles["linear", "post"],
            label="linear post, closed form")
    markers = {"pre": "o", "post": "s"}
    for (net, layer), color in styles.items():
        for w, fill in ((0, "none"), (1, color)):
            ax.plot(q, _r2_value(r2_q[w], net, layer), markers[layer], color=color, mfc=fill, ms=7,
                    label=f"{net} {layer}, sim, wd {'0' if w == 0 else '0.05'}")
    ax.set_xlabel("flip probability $q$ of $x_0$ (per view)")
    ax.set_ylabel("$R^2$ of the value $x_0$ (fresh data)")
    ax.set_title("augmentation strength", fontsize=10)
    ax.legend(fontsize=6.5, ncol=2, loc="lower left")

    ax = axes[1]
    groups, group_r2, theory = arrays["groups"], arrays["group_r2"], arrays["group_theory"]
    for (net, layer), color in styles.items():
        values = _r2_value(group_r2, net, layer)  # (groups, seeds)
        for s in range(values.shape[1]):
            ax.plot(groups * 3, values[:, s], markers[layer], color=color, mfc=color if net == "relu" else "none", ms=7,
                    label=f"{net} {layer}, sim (seeds)" if s == 0 else None)
    ax.plot(groups * 3, theory[:, 0], "_", color=styles["relu", "pre"], ms=30, mew=2.5, label="ReLU pre, closed form")
    ax.plot(groups * 3, theory[:, 1], "_", color=styles["relu", "post"], ms=30, mew=2.5, label="ReLU post, closed form")
    ax.axhline(0.8, color="tab:green", ls="--", lw=0.8)
    ax.set_xticks(groups * 3, [f"{3 * g}\n(g = {g})" for g in groups])
    ax.set_xlabel("hidden width (channels per feature g)")
    ax.set_ylabel("$R^2$ of the value $x_0$ at q = 1/2")
    ax.set_title("width of the diagonal network (weight decay 0.05)", fontsize=10)
    ax.legend(fontsize=7)
    fig.subplots_adjust(bottom=0.25, top=0.92, left=0.06, right=0.99, wspace=0.2)
    caption(fig, "Left: as q grows from 0 to 1/2 the linear attribute x0 loses its invariance (1 - 2q)^2; the "
                 "linear net (both layers) and the ReLU head lose x0 with it, while the ReLU encoder keeps it at every "
                 "q (it needs relu(+x0) and relu(-x0) to build the invariant |x0|). Open markers (no weight decay) at "
                 "q = 1/2: the linear net's pre layer still decodes x0 from its untrained init-scale weights (the "
                 "remnant the R^2 probe is meant to expose); weight decay 0.05 (filled) removes it. Right: with one "
                 "orientation per feature (g = 1) h cannot express x0 linearly; two orientations suffice. Closed "
                 "forms: no weight decay.",
            width=170)
    return fig


def main(argv=None) -> int:
    return run_figure(NAME, __doc__, Config, compute, plot, argv)


if __name__ == "__main__":
    sys.exit(main())
