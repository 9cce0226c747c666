"""Digits on photos (the paper's Fig. 3 analogue): digit probe accuracy below and above the head against p_drop and s.

Run:  python -m figures.pixels [--quick] [--out DIR] [--redraw]
Expected runtime: about a minute on 2 idle CPU cores (30 runs in one compiled program; the
compilation, about a quarter of it, is cached); --quick a few seconds once compiled.

Left: digit accuracy of the normalized ridge probe (one-hot targets, argmax; held-out digits on
un-augmented images) on the pre-projection representation h and the post-projection z of an
encoder pretrained with a two-layer MLP head, against the probability p_drop that a view drops the
digit; the fixed reweighting head diag(1, 1/k, ...) as a third arm (its pre); the untrained
encoder's pre as a reference line. Middle: the pre-minus-post gap (ridge and logistic probes).
Right: the same against the digit's strength s at one p_drop. Markers: mean over seeds; bars:
standard deviation over seeds. Every arm runs the default setting of ``python -m simulations
pixels`` (stated in the caption, with the measured gaps in words).
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np

from figures._common import caption, config_record, run_figure
from simulations.experiment import point
from simulations.experiments.pixels import PixelsConfig, run_batch

NAME = "pixels"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Sweeps and the pretraining setting shared by every arm.

    Attributes:
        p_drops: x values of the left panels (MLP head).
        fixed_p_drops: p_drop values of the fixed-head arm.
        strengths: x values of the right panel (at ``strength_p_drop``).
        strength: digit strength of the p_drop sweep.
        strength_p_drop: p_drop of the strength sweep.
        kappa: k of the fixed head arm.
        base: PixelsConfig fields that differ from its defaults (none: the default setting).
    """

    p_drops: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 0.9)
    fixed_p_drops: tuple[float, ...] = (0.0, 0.5, 0.9)
    strengths: tuple[float, ...] = (0.3, 0.6, 1.0)
    strength: float = 1.0
    strength_p_drop: float = 0.5
    kappa: float = 1.05
    base: tuple[tuple[str, object], ...] = ()

    @classmethod
    def quick(cls) -> Config:
        return cls(p_drops=(0.0, 0.9), fixed_p_drops=(0.0, 0.9), strengths=(0.3, 1.0),
                   base=(("seeds", 2), ("steps", 20), ("batch_size", 16), ("width", 32), ("rep_dim", 8),
                         ("n_probe_train", 100), ("n_probe_test", 100), ("record_every", 10)))


def compute(config: Config):
    """One run_batch over every distinct arm (the head and every swept field are traced: one compilation)."""
    base = dict(config.base)
    arms = {"mlp": [("mlp", p, config.strength) for p in config.p_drops],
            "fixed": [("fixed", p, config.strength) for p in config.fixed_p_drops],
            "strength": [("mlp", config.strength_p_drop, s) for s in config.strengths]}
    distinct = list(dict.fromkeys(arm for group in arms.values() for arm in group))  # shared arms run once
    configs = [PixelsConfig(**base, head=head, p_drop=p, strength=s, kappa=config.kappa) for head, p, s in distinct]
    result = run_batch(configs)
    fields = {"pre": lambda r: r.pre.digit, "post": lambda r: r.post.digit,
              "untrained": lambda r: r.untrained_pre.digit,
              "pre_logistic": lambda r: r.pre.digit_logistic, "post_logistic": lambda r: r.post.digit_logistic,
              "photo_pre": lambda r: r.pre.photo}
    per_arm = {name: np.stack([np.asarray(get(point(result, i))) for i in range(len(distinct))])
               for name, get in fields.items()}  # (distinct arms, seeds)
    arrays = {"p_drops": np.asarray(config.p_drops), "fixed_p_drops": np.asarray(config.fixed_p_drops),
              "strengths": np.asarray(config.strengths)}
    for group, members in arms.items():
        rows = [distinct.index(arm) for arm in members]
        for name, values in per_arm.items():
            arrays[f"{group}_{name}"] = values[rows]
    diagnostics = result.diagnostics
    record = {"config": config_record(config), "setting": dataclasses.asdict(configs[0]), "seed": 0,
              "runs": len(distinct) * configs[0].seeds, "wall_time": float(diagnostics.wall_time[0]),
              "compile_time": float(diagnostics.compile_time[0]),
              "images_per_second": float(diagnostics.images_per_second[0])}
    gap = arrays["mlp_pre"] - arrays["mlp_post"]
    print(f"{NAME}: pre - post digit gap vs p_drop {np.round(gap.mean(axis=1), 3).tolist()} "
          f"({record['wall_time']:.1f} s)", file=sys.stderr)
    return arrays, record


def _errorbar(ax, x, values, **kwargs):
    ax.errorbar(x, values.mean(axis=1), yerr=values.std(axis=1), capsize=3, **kwargs)


def _gap_sentence(p_drops, gap) -> str:
    """What the measured gap does along p_drop, in words (from the data, for the caption)."""
    mean, spread = gap.mean(axis=1), gap.std(axis=1)
    values = ", ".join(f"{m:+.3f} +- {d:.3f} at {p:g}" for p, m, d in zip(p_drops, mean, spread, strict=True))
    peak = int(np.argmax(mean))
    if peak == len(mean) - 1 and np.all(np.diff(mean) > 0):
        trend = "it grows with p_drop at every step"
    elif mean[-1] > mean[0]:
        trend = (f"it is larger at p_drop {p_drops[-1]:g} than at 0 (by {mean[-1] - mean[0]:+.3f}) but not "
                 f"monotone: largest at {p_drops[peak]:g}")
    else:
        trend = f"it does not grow with p_drop (largest at {p_drops[peak]:g})"
    return f"Measured pre - post digit gap (mean +- std over seeds): {values}; {trend}."


def plot(arrays, record):
    """Three panels: accuracies vs p_drop, gap vs p_drop, accuracies and gap vs s."""
    import matplotlib.pyplot as plt

    config, setting = record["config"], record["setting"]
    p = arrays["p_drops"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.2))
    ax = axes[0]
    _errorbar(ax, p, arrays["mlp_pre"], marker="o", color="C0", label="pre (h), MLP head")
    _errorbar(ax, p, arrays["mlp_post"], marker="s", color="C3", label="post (z), MLP head")
    _errorbar(ax, arrays["fixed_p_drops"], arrays["fixed_pre"], marker="^", color="C2",
              label=f"pre (h), fixed head k = {config['kappa']}")
    ax.axhline(arrays["mlp_untrained"].mean(), color="0.4", ls="--", label="untrained encoder, pre")
    ax.axhline(0.1, color="0.7", ls=":", label="chance")
    ax.set_xlabel("p_drop (probability a view drops the digit)")
    ax.set_ylabel("held-out digit accuracy (ridge probe)")
    ax.set_title(f"digit strength s = {config['strength']}", fontsize=10)
    ax.legend(fontsize=8)
    ax = axes[1]
    _errorbar(ax, p, arrays["mlp_pre"] - arrays["mlp_post"], marker="o", color="k", label="ridge probe")
    _errorbar(ax, p, arrays["mlp_pre_logistic"] - arrays["mlp_post_logistic"], marker="x", color="0.5",
              label="logistic probe")
    ax.axhline(0.0, color="0.7", lw=0.8)
    ax.set_xlabel("p_drop")
    ax.set_ylabel("pre - post digit accuracy (MLP head)")
    ax.set_title("the paper's claim: this gap grows with p_drop", fontsize=10)
    ax.legend(fontsize=8)
    ax = axes[2]
    s = arrays["strengths"]
    _errorbar(ax, s, arrays["strength_pre"], marker="o", color="C0", label="pre (h)")
    _errorbar(ax, s, arrays["strength_post"], marker="s", color="C3", label="post (z)")
    _errorbar(ax, s, arrays["strength_untrained"], marker=".", color="0.4", ls="--", label="untrained, pre")
    _errorbar(ax, s, arrays["strength_pre"] - arrays["strength_post"], marker="d", color="k", label="gap (pre - post)")
    ax.set_xlabel(f"digit strength s (p_drop = {config['strength_p_drop']})")
    ax.set_ylabel("held-out digit accuracy")
    ax.legend(fontsize=8)
    fig.suptitle("Digits on photos: does the representation below the head keep the digit that augmentation drops?",
                 fontsize=11)
    fig.subplots_adjust(left=0.05, right=0.98, top=0.88, bottom=0.33, wspace=0.25)
    above = arrays["mlp_pre"][0].mean() - arrays["mlp_untrained"][0].mean()
    gaps = _gap_sentence(p, arrays["mlp_pre"] - arrays["mlp_post"])
    caption(fig, f"{'Quick smoke setting (shows nothing). ' if record.get('quick') else ''}"
                 f"{setting['encoder']} encoder (width {setting['width']}, h of dimension {setting['rep_dim']}), "
                 f"two-layer MLP head, InfoNCE (temperature {setting['temperature']}), {setting['seeds']} seeds, "
                 f"{setting['steps']} Adam steps of {setting['batch_size']} pairs, {setting['image_size']} px views "
                 f"with a {setting['digit_size']} px digit; probes trained on {setting['n_probe_train']} and tested "
                 f"on {setting['n_probe_test']} un-augmented images with held-out digits. Markers: mean over seeds, "
                 f"bars: std. At p_drop 0 the trained pre probe is {above:+.3f} above the untrained encoder's "
                 f"({'the digit is learned' if above > 0 else 'the digit is not learned'}); at p_drop > 0 compare "
                 f"pre with the dashed line (below it: training suppresses the digit). {gaps} "
                 f"Photo-class accuracy of pre (mean over p_drop): {arrays['mlp_photo_pre'].mean():.2f}. "
                 f"{record['runs']} runs in one program: {record['wall_time']:.0f} s ({record['compile_time']:.0f} s "
                 f"compiling, {record['images_per_second']:.0f} images/s).", width=190)
    return fig


def main(argv=None) -> int:
    return run_figure(NAME, __doc__, Config, compute, plot, argv)


if __name__ == "__main__":
    sys.exit(main())
