"""Per-feature, per-attribute decodability (R^2) below and above the head: linear vs ReLU networks.

Run:  python -m figures.nonlinear_decodability [--quick] [--out DIR] [--redraw]
Expected runtime: ~15 s on 2 idle CPU cores (mostly compilation); --quick ~10 s.

Feature 0's sign is flipped independently in each view with probability 1/2 (its value x0 is
destroyed by the augmentation, its magnitude |x0| kept); features 1 and 2 are invariant. A
diagonal ReLU net (pairs of channels relu(+u x_j), relu(-u' x_j), linear head) and a linear net
of the same widths are trained on the same minibatches (sampled spectral loss, weight decay 0.05;
simulations.experiments.nonlinear). Bars: R^2 of the normalized ridge probe on fresh test data
(mean over seeds, whiskers min..max); horizontal ticks: closed-form R^2 of the ReLU net at its
predicted fixed point (theory.relu_diagonal, no weight decay, population probe).
"""

from __future__ import annotations

import dataclasses
import sys

from figures._common import caption, config_record, run_figure
from simulations.experiment import run_split
from simulations.experiments import nonlinear

NAME = "nonlinear_decodability"
#: (label, attribute index, feature index) of the bar groups.
GROUPS = (("$x_0$ (flipped)", 0, 0), ("$|x_0|$", 1, 0), ("$x_1$ (invariant)", 0, 1), ("$|x_1|$", 1, 1),
          ("$x_2$ (invariant)", 0, 2))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Seeds and training length (everything else: NonlinearConfig defaults).

    Attributes:
        seeds: number of seeds (one vmapped program).
        steps: gradient steps.
        n_test: fresh probe test inputs (n_train equal).
    """

    seeds: int = 5
    steps: int = 5000
    n_test: int = 10_000

    @classmethod
    def quick(cls) -> Config:
        return cls(seeds=2, steps=2500, n_test=4_000)


def compute(config: Config):
    configs = [nonlinear.NonlinearConfig(seed=s, steps=config.steps, n_train=config.n_test, n_test=config.n_test)
               for s in range(config.seeds)]
    results = run_split(nonlinear.EXPERIMENT, configs)
    r2 = results.r2  # (seeds, nets, layers, attributes, d)
    predicted = results.predicted_r2[0]  # (layers, attributes, d)
    summaries = [nonlinear.summarize(r) for r in r2]
    print(f"{NAME}: relu pre x0 R^2 {r2[:, 0, 0, 0, 0].min():.3f}..{r2[:, 0, 0, 0, 0].max():.3f}, "
          f"post {r2[:, 0, 1, 0, 0].min():.4f}..{r2[:, 0, 1, 0, 0].max():.4f}", file=sys.stderr)
    record = {"config": config_record(config), "experiment": dataclasses.asdict(configs[0]), "seed": 0,
              "summaries": summaries}
    return {"r2": r2, "predicted": predicted}, record


def plot(arrays, record):
    import matplotlib.pyplot as plt

    r2, predicted = arrays["r2"], arrays["predicted"]
    fig, ax = plt.subplots(figsize=(11, 5.2))
    series = (("linear", 1, 0, "tab:gray", "//"), ("linear", 1, 1, "0.35", "xx"),
              ("ReLU", 0, 0, "tab:blue", ""), ("ReLU", 0, 1, "tab:red", ""))
    width = 0.19
    for s, (net, n, layer, color, hatch) in enumerate(series):
        for g, (_label, attribute, feature) in enumerate(GROUPS):
            values = r2[:, n, layer, attribute, feature]
            x = g + (s - 1.5) * width
            ax.bar(x, values.mean(), width, color=color, hatch=hatch, edgecolor="k", lw=0.5,
                   label=f"{net} {'pre (h)' if layer == 0 else 'post (z)'}" if g == 0 else None)
            ax.errorbar(x, values.mean(), yerr=[[values.mean() - values.min()], [values.max() - values.mean()]],
                        color="k", capsize=2, lw=0.8)
            if net == "ReLU":
                ax.hlines(predicted[layer, attribute, feature], x - width / 2, x + width / 2, color="k", lw=2.2,
                          label="ReLU closed form (fixed point)" if (g == 0 and layer == 0) else None)
    ax.axhline(0.8, color="tab:green", ls="--", lw=0.8)
    ax.axhline(0.1, color="tab:orange", ls="--", lw=0.8)
    ax.set_xticks(range(len(GROUPS)), [g[0] for g in GROUPS])
    ax.set_ylabel("probe $R^2$ on fresh test data")
    ax.set_ylim(-0.05, 1.22)
    ax.legend(fontsize=8, loc="upper center", ncol=5)
    seeds = r2.shape[0]
    ax.set_title(f"What each layer holds: the ReLU encoder keeps the sign-flipped $x_0$, its head and a linear net "
                 f"drop it ({seeds} seeds)", fontsize=10)
    fig.subplots_adjust(bottom=0.2, top=0.92, left=0.07, right=0.98)
    caption(fig, "Bars: R^2 of the variance-normalized ridge probe (ridge 0.1) on fresh test data, mean over seeds, "
                 "whiskers min..max. Feature 0's sign flips with probability 1/2 in each view; features 1, 2 are "
                 "invariant. Black ticks: closed-form R^2 of the diagonal ReLU net at its predicted fixed point "
                 "(no weight decay; the simulation uses 0.05). Dashed: the thresholds 0.8 (present) "
                 "and 0.1 (absent) used to call a feature kept or dropped. z holds |x0| but not x0; a linear net "
                 "holds x0 nowhere.", width=160)
    return fig


def main(argv=None) -> int:
    return run_figure(NAME, __doc__, Config, compute, plot, argv)


if __name__ == "__main__":
    sys.exit(main())
