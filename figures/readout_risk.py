"""Which layer to read out: probe risk and RankMe at every layer of a depth-8 net, theory and trained nets.

Run:  python -m figures.readout_risk [--quick] [--out DIR] [--redraw]
Expected runtime: ~25 s on 2 CPU cores (mostly compiling the depth-8 flow; cached afterwards); --quick
(depth 4, fewer probe samples) ~10 s.

Left: the normalized ridge probe's test MSE at every layer l = 0..L (0 = input) for three targets
of one pretraining distribution; lines are the closed form (theory.readout, continuous in l), markers
the trained balanced nets probed on fresh samples; stars mark the oracle's layer l* (one target has an
interior optimum). Right: RankMe of every layer on the pretraining distribution (line: closed form,
markers: measured from n_train representations); it does not depend on the target, so its one
choice (diamond) is right for at most the targets whose l* it matches; the legend gives each target's
regret (risk at RankMe's layer minus risk at l*).
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np

from figures._common import caption, config_record, feature_colors, run_figure
from simulations.experiment import point
from simulations.experiments import readout as experiment
from theory import downstream as downstream_theory
from theory import readout as theory

NAME = "readout_risk"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Pretraining and downstream moments, depth, probe and the trained nets.

    Attributes:
        pos_cov, second_moment: pretraining (a, b); post weights w = sqrt(a)/b = (0.55, 0.16, 1.41).
        downstream_second_moment: b_ds (the weak feature 1 dominates downstream).
        depth: L.
        targets: target features drawn.
        ridge: probe penalty.
        init_scale: balanced init (per-layer singular value).
        n_train, n_test: probe samples (RankMe uses n_train pretraining samples).
        seed: root seed.
    """

    pos_cov: tuple[float, ...] = (1.2, 0.4, 0.125)
    second_moment: tuple[float, ...] = (2.0, 4.0, 0.25)
    downstream_second_moment: tuple[float, ...] = (0.25, 4.0, 0.5)
    depth: int = 8
    targets: tuple[int, ...] = (0, 1, 2)
    ridge: float = 0.1
    init_scale: float = 0.5
    n_train: int = 20_000
    n_test: int = 100_000
    seed: int = 0

    @classmethod
    def quick(cls) -> Config:
        return cls(depth=4, n_train=4_000, n_test=20_000)


def compute(config: Config):
    """Train one net per target (one vmapped solve), probe every layer, and the closed forms."""
    configs = [experiment.ReadoutConfig(pos_cov=config.pos_cov, second_moment=config.second_moment,
                                        downstream_second_moment=config.downstream_second_moment, depth=config.depth,
                                        target=j, ridge=config.ridge, init_scale=config.init_scale,
                                        n_train=config.n_train, n_test=config.n_test, seed=config.seed)
               for j in config.targets]
    result = experiment.run_batch(configs)
    reports = [experiment.report(point(result, i), c) for i, c in enumerate(configs)]
    fine = np.linspace(0.0, config.depth, 161)
    w = downstream_theory.feature_layer_weights(config.pos_cov, config.second_moment, config.depth)[-1]
    curves = np.stack([downstream_theory.probe_risk(w[None, :] ** (fine[:, None] / config.depth),
                                                    config.downstream_second_moment, j, config.ridge)
                       for j in config.targets])
    spectra = np.asarray(config.second_moment)[None, :] * w[None, :] ** (2 * fine[:, None] / config.depth)
    arrays = {
        "fine_layers": fine, "risk_curves": curves, "rankme_curve": np.asarray(theory.rankme(np.sqrt(spectra))),
        "measured_risk": np.array([r["risk"]["measured"] for r in reports]),
        "predicted_risk": np.array([r["risk"]["predicted"] for r in reports]),
        "measured_rankme": np.array(reports[0]["rankme"]["measured"]),
        "predicted_rankme": np.array(reports[0]["rankme"]["predicted"]),
        "best_layer": np.array([[r["best_layer"]["measured"], r["best_layer"]["predicted"]] for r in reports]),
        "rankme_layer": np.array([[r["rankme_layer"]["measured"], r["rankme_layer"]["predicted"]] for r in reports]),
        "rankme_regret": np.array([[r["rankme_regret"]["measured"], r["rankme_regret"]["predicted"]] for r in reports]),
    }
    record = {"config": config_record(config), "seed": config.seed,
              "converged": [r["diagnostics"]["converged"] for r in reports],
              "max_risk_error": float(np.max(np.abs(arrays["measured_risk"] - arrays["predicted_risk"]))),
              "max_rankme_relative_error": float(np.max(np.abs(arrays["measured_rankme"] / arrays["predicted_rankme"]
                                                               - 1)))}
    print(f"{NAME}: max |risk error| {record['max_risk_error']:.4f}, RankMe relative error "
          f"{record['max_rankme_relative_error']:.4f}", file=sys.stderr)
    return arrays, record


def plot(arrays, record):
    """Risk per layer (left) and RankMe per layer with its choice and regret (right)."""
    import matplotlib.pyplot as plt

    config = record["config"]
    depth, targets = config["depth"], config["targets"]
    layers = np.arange(depth + 1)
    colors = feature_colors(len(targets))
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.4))
    for k, j in enumerate(targets):
        best = int(arrays["best_layer"][k, 1])
        left.plot(arrays["fine_layers"], arrays["risk_curves"][k], color=colors[k], lw=1.6,
                  label=f"target {j}: l* = {best} (trained: {int(arrays['best_layer'][k, 0])})")
        left.plot(layers, arrays["measured_risk"][k], "o", color=colors[k], ms=6, mfc="none", mew=1.5)
        left.plot(best, arrays["predicted_risk"][k, best], "*", color=colors[k], ms=16, mec="k")
    choice = int(arrays["rankme_layer"][0, 1])
    left.axvline(choice, color="0.4", ls=":", lw=1.2, label=f"RankMe's layer {choice}")
    left.set_xlabel("layer l (0 = input, L = output)")
    left.set_ylabel("probe test MSE")
    left.set_title(f"Probe risk per layer, depth {depth}: lines theory, circles trained nets, stars l*", fontsize=10)
    left.legend(fontsize=8)
    right.plot(arrays["fine_layers"], arrays["rankme_curve"], color="k", lw=1.6, label="RankMe, closed form")
    right.plot(layers, arrays["measured_rankme"], "o", color="k", mfc="none", ms=6, label="RankMe, measured")
    right.plot(choice, arrays["predicted_rankme"][choice], "D", color="0.4", ms=10, label=f"RankMe's choice: {choice}")
    for k, j in enumerate(targets):
        right.plot([], [], " ", label=f"target {j}: regret {arrays['rankme_regret'][k, 1]:.4f} "
                                       f"(trained {arrays['rankme_regret'][k, 0]:.4f})")
    right.set_xlabel("layer l")
    right.set_ylabel("RankMe (pretraining distribution)")
    right.set_title("RankMe picks one layer for every target", fontsize=10)
    right.legend(fontsize=8)
    fig.subplots_adjust(left=0.06, right=0.98, top=0.9, bottom=0.22, wspace=0.22)
    fig.suptitle(f"Which layer to read out: closed-form oracle vs trained depth-{depth} linear nets and RankMe",
                 fontsize=11)
    caption(fig, f"Pretraining a = {tuple(config['pos_cov'])}, b = {tuple(config['second_moment'])}, downstream "
                 f"b_ds = {tuple(config['downstream_second_moment'])}, ridge {config['ridge']}, balanced init "
                 f"{config['init_scale']}, n_train {config['n_train']}, n_test {config['n_test']}. The risk at layer l "
                 "is (ridge / (q_j + ridge))^2 with q_j the target's variance share; ln q_j is concave in l/L, so each "
                 "target has one best layer: the weakest feature reads best at layer 1, the strongest at L, the middle "
                 "one inside. Max |measured - predicted| risk "
                 f"{record['max_risk_error']:.4f}; RankMe relative error {record['max_rankme_relative_error']:.4f}.")
    return fig


def main(argv=None) -> int:
    return run_figure(NAME, __doc__, Config, compute, plot, argv)


if __name__ == "__main__":
    sys.exit(main())
