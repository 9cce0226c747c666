"""Digits on photos: does the pre-projection representation keep a digit that augmentation drops?

Run:  python -m simulations pixels --json            (3 seeds, vmapped; under a minute on 2 CPU cores)
      python -m simulations pixels --p-drop 0.9 --head fixed --kappa 1.05 --json

The paper's MNIST-on-CIFAR-10 experiment on pixels, offline by default: a handwritten digit at
contrast s pasted on a patch of a photo (class = the photo; :mod:`simulations.data.images`). A small
ReLU encoder (MLP or conv) with a projection head (none, linear, two-layer MLP, or the fixed
reweighting head diag(1, 1/k, ...)) is pretrained with InfoNCE (NT-Xent) or the spectral loss on
two views per sample (random crop and flip of the photo, the digit dropped with probability
p_drop per view). Then linear probes for the digit and for the photo class read held-out,
un-augmented images below the head (h, "pre"), above it (z, "post"), and at the encoder's first
layer ("hidden"), for the trained and for the untrained (initial) network. ``--data-dir DIR``
runs the same on MNIST-on-CIFAR-10 from files in DIR (:mod:`simulations.data.datasets`).

Headline accuracies ("digit_accuracy", "photo_accuracy") are those of the library's normalized
ridge probe fitted to one-hot targets (argmax); a multinomial logistic probe on the same
normalized features is reported beside them ("..._logistic"). docs/pixels.md gives a larger
setting for a GPU, closer to the paper's scale.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from simulations import contrastive, draws
from simulations.data import datasets, images
from simulations.experiment import Command, Experiment, check_one_shape
from simulations.losses import spectral_loss
from simulations.models import encoders
from theory.checks import check_choice, check_float, check_int

NAME = "pixels"
# Named key streams (fold_in): each seed's network and batches; the probe images, shared by every
# seed and point of one root seed (paired comparisons across p_drop).
_SEED_STREAM, _PROBE_TRAIN_STREAM, _PROBE_TEST_STREAM = 0, 1, 2
_INIT_STREAM, _TRAIN_STREAM = 0, 1
#: Fields that are traced (a sweep over them shares one compiled program).
TRACED = ("p_drop", "strength", "head", "kappa", "temperature", "learning_rate", "ridge", "seed")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PixelsConfig:
    """Digits on photos: contrastive pretraining, then digit and photo probes below and above the head.

    Attributes:
        p_drop: probability that an augmented view drops the digit (independently per view).
        strength: the digit's contrast s in [0, 1]: view = (1 - s m) photo + s m, m the digit's ink.
        encoder: mlp or conv (ReLU).
        head: projection head: none, linear, mlp (two layers) or fixed (diag(1, 1/k, ...)).
        kappa: k >= 1 of the fixed head (used only with --head fixed).
        loss: infonce (NT-Xent) or spectral.
        temperature: InfoNCE temperature.
        seeds: independent pretraining runs, vmapped.
        steps: Adam steps (a multiple of record_every).
        batch_size: samples per step (two views each).
        learning_rate: Adam step size.
        image_size: side of a view in pixels (a sample's patch is 8 pixels wider, the crop jitter).
        digit_size: side of the pasted digit in pixels.
        width: hidden units of the MLP encoder.
        channels: channels of the conv encoder's first layer (the second has twice as many).
        rep_dim: dimension of the representation h and of the head's output z.
        n_probe_train, n_probe_test: balanced un-augmented probe images (the test set's digits are
            held out from pretraining and from the probe's training set).
        ridge: penalty of the normalized ridge probe (features scaled to total variance 1).
        data_dir: a directory holding CIFAR-10 (python batches) and MNIST (IDX files): run
            MNIST-on-CIFAR-10 from it (none: the bundled offline digits on photos).
        record_every: record the loss every this many steps.
        seed: root seed.
    """

    p_drop: float = 0.5
    strength: float = 1.0
    encoder: str = dataclasses.field(default="mlp", metadata={"choices": encoders.ENCODERS})
    head: str = dataclasses.field(default="mlp", metadata={"choices": encoders.HEADS})
    kappa: float = 1.05
    loss: str = dataclasses.field(default="infonce", metadata={"choices": ("infonce", "spectral")})
    temperature: float = 0.2
    seeds: int = 3
    steps: int = 150
    batch_size: int = 64
    learning_rate: float = 1e-3
    image_size: int = 16
    digit_size: int = 12
    width: int = 128
    channels: int = 16
    rep_dim: int = 64
    n_probe_train: int = 1000
    n_probe_test: int = 500
    ridge: float = 1e-3
    data_dir: str | None = None
    record_every: int = 50
    seed: int = 0

    def __post_init__(self):
        check_float("p_drop", self.p_drop, minimum=0.0, maximum=1.0)
        check_float("strength", self.strength, minimum=0.0, maximum=1.0)
        check_choice("encoder", self.encoder, encoders.ENCODERS)
        check_choice("head", self.head, encoders.HEADS)
        check_float("kappa", self.kappa, minimum=1.0)
        check_choice("loss", self.loss, ("infonce", "spectral"))
        check_float("temperature", self.temperature, minimum=0.0, strict_minimum=True)
        for name in ("seeds", "steps", "image_size", "digit_size", "width", "channels", "rep_dim", "record_every",
                     "n_probe_train", "n_probe_test"):
            check_int(name, getattr(self, name), minimum=20 if name.startswith("n_probe") else 1)
        check_int("batch_size", self.batch_size, minimum=2)
        check_float("learning_rate", self.learning_rate, minimum=0.0, strict_minimum=True)
        check_float("ridge", self.ridge, minimum=0.0)
        check_int("seed", self.seed, minimum=0)
        if self.steps % self.record_every:
            raise ValueError(f"steps must be a multiple of record_every={self.record_every}, got {self.steps}")
        if self.digit_size > self.image_size:
            raise ValueError(f"digit_size must be <= image_size={self.image_size}, got {self.digit_size}")
        limit = images.PHOTO_SIZE - images.CROP_JITTER if self.data_dir is None else 32
        if self.image_size > limit:
            raise ValueError(f"image_size must be <= {limit} for this data, got {self.image_size}")

    @classmethod
    def quick(cls, **overrides) -> PixelsConfig:
        """Seconds: 2 seeds, 40 steps, a small MLP encoder, small probe sets."""
        fields = dict(seeds=2, steps=40, batch_size=32, encoder="mlp", width=64, rep_dim=16, image_size=16,
                      digit_size=12, n_probe_train=200, n_probe_test=100, record_every=20)
        return cls(**{**fields, **overrides})


def shape_key(config: PixelsConfig) -> tuple:
    """Every field but the traced ones: configs with one key run as one compiled program."""
    return tuple((f.name, getattr(config, f.name)) for f in dataclasses.fields(config) if f.name not in TRACED)


class Probes(NamedTuple):
    """Test accuracies in [0, 1] of one representation, per seed (S,)."""

    digit: jax.Array
    photo: jax.Array
    digit_logistic: jax.Array
    photo_logistic: jax.Array


class Diagnostics(NamedTuple):
    """Losses (S, R) at every record_every-th step; wall, compile and run time (s) and images/s of the batch."""

    losses: jax.Array
    wall_time: jax.Array
    compile_time: jax.Array
    images_per_second: jax.Array


class PixelsResult(NamedTuple):
    """Probes of the trained (pre, post, hidden) and untrained networks; digit probes of "hidden" only by ridge."""

    pre: Probes
    post: Probes
    hidden_digit: jax.Array
    untrained_pre: Probes
    untrained_post: Probes
    untrained_hidden_digit: jax.Array
    diagnostics: Diagnostics


def load_bank(config: PixelsConfig) -> images.ImageBank:
    """The bundled offline bank, or MNIST-on-CIFAR-10 from ``config.data_dir``."""
    return datasets.image_bank(config.data_dir, image_size=config.image_size, digit_size=config.digit_size)


def _probe(train, test, data, num_classes, ridge):
    """Probes of one representation (train (n, k), test (m, k)): Probes of scalars."""
    (_, photo, digit), (_, photo_test, digit_test) = data
    return Probes(contrastive.ridge_classifier_accuracy(train, digit, test, digit_test, 10, ridge),
                  contrastive.ridge_classifier_accuracy(train, photo, test, photo_test, num_classes, ridge),
                  contrastive.logistic_accuracy(train, digit, test, digit_test, 10),
                  contrastive.logistic_accuracy(train, photo, test, photo_test, num_classes))


def _one_run(bank, hyper, key, data, config: PixelsConfig, num_classes: int):
    """One seed: init, probe, pretrain, probe. ``hyper`` holds the traced fields (see run_batch)."""
    p_drop, strength, head, kappa, temperature, learning_rate, ridge = hyper
    net = functools.partial(encoders.apply, head=head.astype(jnp.int32), kappa=kappa)
    params0 = encoders.init(draws.fold_in(key, _INIT_STREAM), encoder=config.encoder, image_size=config.image_size,
                            width=config.width, channels=config.channels, rep_dim=config.rep_dim)

    def sample_pairs(batch_key, n):
        return images.view_pairs(bank, batch_key, n, image_size=config.image_size, p_drop=p_drop, strength=strength)

    def loss_fn(params, x, x_pos):
        z = net(params, jnp.concatenate([x, x_pos]))[2]
        if config.loss == "spectral":
            return spectral_loss(z[: x.shape[0]], z[x.shape[0]:])
        return optax.losses.ntxent(z, jnp.tile(jnp.arange(x.shape[0]), 2), temperature)

    trained = contrastive.pretrain(loss_fn, params0, sample_pairs, draws.fold_in(key, _TRAIN_STREAM),
                                   learning_rate=learning_rate, steps=config.steps, batch_size=config.batch_size,
                                   record_every=config.record_every)

    # pre and post of the trained and the untrained network in one vmapped probe (one trace: short compilation)
    train = [net(p, data[0][0]) for p in (trained.params, params0)]
    test = [net(p, data[1][0]) for p in (trained.params, params0)]
    reps = jnp.stack([train[0][1], train[0][2], train[1][1], train[1][2]])
    reps_test = jnp.stack([test[0][1], test[0][2], test[1][1], test[1][2]])
    probes = jax.vmap(lambda a, b: _probe(a, b, data, num_classes, ridge))(reps, reps_test)
    hidden = jax.vmap(lambda a, b: contrastive.ridge_classifier_accuracy(a, data[0][2], b, data[1][2], 10, ridge))(
        jnp.stack([train[0][0], train[1][0]]), jnp.stack([test[0][0], test[1][0]]))
    pick = [jax.tree_util.tree_map(lambda leaf, i=i: leaf[i], probes) for i in range(4)]
    return pick[0], pick[1], hidden[0], pick[2], pick[3], hidden[1], trained.losses


@functools.partial(jax.jit, static_argnames=("config",))
def _program(bank, hyper, keys, *, config: PixelsConfig):
    """Every (point, seed) run of one shape, vmapped: hyper (P, 7) traced fields, keys (P, 2) root keys."""
    def point(hyper_p, root):
        draw = functools.partial(images.probe_images, bank, image_size=config.image_size, strength=hyper_p[1])
        data = (draw(draws.fold_in(root, _PROBE_TRAIN_STREAM), config.n_probe_train, test=False),
                draw(draws.fold_in(root, _PROBE_TEST_STREAM), config.n_probe_test, test=True))
        seed_keys = jax.vmap(lambda s: draws.fold_in(draws.fold_in(root, _SEED_STREAM), s))(
            jnp.arange(config.seeds))
        return jax.vmap(lambda k: _one_run(bank, hyper_p, k, data, config, bank.num_classes))(seed_keys)

    return jax.vmap(point)(hyper, keys)


def run_batch(configs, *, place=None) -> PixelsResult:
    """Every config of one shape key in one compiled program; leading point axis on every leaf."""
    check_one_shape(EXPERIMENT, configs)
    first, bank = configs[0], load_bank(configs[0])
    hyper = jnp.asarray([[c.p_drop, c.strength, encoders.HEADS.index(c.head), c.kappa, c.temperature,
                          c.learning_rate, c.ridge] for c in configs], jnp.float32)
    keys = jnp.stack([jax.random.PRNGKey(c.seed) for c in configs])
    hyper, keys = (hyper, keys) if place is None else (place(hyper), place(keys))
    static = dataclasses.replace(first, **{name: getattr(PixelsConfig(), name) for name in TRACED})
    start = time.perf_counter()
    compiled = _program.lower(bank, hyper, keys, config=static).compile()
    compiled_at = time.perf_counter()
    pre, post, hidden, pre0, post0, hidden0, losses = jax.block_until_ready(compiled(bank, hyper, keys))
    end = time.perf_counter()
    views, count = 2 * first.batch_size * first.steps * first.seeds * len(configs), len(configs)
    diagnostics = Diagnostics(losses, np.full(count, end - start), np.full(count, compiled_at - start),
                              np.full(count, views / (end - compiled_at)))
    return PixelsResult(Probes(*pre), Probes(*post), hidden, Probes(*pre0), Probes(*post0), hidden0, diagnostics)


def _summary(probes: Probes) -> dict:
    digit, photo = np.asarray(probes.digit), np.asarray(probes.photo)
    return {"digit_accuracy": float(digit.mean()), "photo_accuracy": float(photo.mean()),
            "digit_accuracy_seeds": digit.tolist(), "photo_accuracy_seeds": photo.tolist(),
            "digit_accuracy_std": float(digit.std()), "photo_accuracy_std": float(photo.std()),
            "digit_accuracy_logistic": float(np.mean(probes.digit_logistic)),
            "photo_accuracy_logistic": float(np.mean(probes.photo_logistic))}


def report(point: PixelsResult, config: PixelsConfig) -> dict:
    """The JSON object of ``python -m simulations pixels --json``."""
    gap = np.asarray(point.pre.digit) - np.asarray(point.post.digit)
    losses = np.asarray(point.diagnostics.losses)
    return {
        "data": "MNIST on CIFAR-10" if config.data_dir else "bundled digits on bundled photos",
        "pre": _summary(point.pre), "post": _summary(point.post),
        "hidden": {"digit_accuracy": float(np.mean(point.hidden_digit))},
        "digit_gap": {"mean": float(gap.mean()), "std": float(gap.std()), "seeds": gap.tolist()},
        "untrained": {"pre": _summary(point.untrained_pre), "post": _summary(point.untrained_post),
                      "hidden": {"digit_accuracy": float(np.mean(point.untrained_hidden_digit))}},
        "chance": {"digit": 0.1, "photo": 1.0 / 10},
        "diagnostics": {"steps": config.steps, "seeds": config.seeds, "final_loss": float(losses[:, -1].mean()),
                        "final_loss_seeds": losses[:, -1].tolist(),
                        "wall_time": float(point.diagnostics.wall_time),
                        "compile_time": float(point.diagnostics.compile_time),
                        "images_per_second": float(point.diagnostics.images_per_second)},
    }


def table(point: PixelsResult, config: PixelsConfig) -> str:
    """A readable summary of :func:`report`."""
    summary = report(point, config)
    rows = [f"{NAME}: {summary['data']}, p_drop {config.p_drop}, strength {config.strength}, {config.encoder} "
            f"encoder, {config.head} head, {config.loss}, {config.seeds} seeds x {config.steps} steps",
            f"{'':12}{'digit (ridge)':>16}{'digit (logistic)':>18}{'photo (ridge)':>16}"]
    for name, part in (("pre", summary["pre"]), ("post", summary["post"]),
                       ("untrained pre", summary["untrained"]["pre"])):
        rows.append(f"{name:12}{part['digit_accuracy']:>10.3f} +-{part['digit_accuracy_std']:.3f}"
                    f"{part['digit_accuracy_logistic']:>18.3f}{part['photo_accuracy']:>16.3f}")
    diagnostics = summary["diagnostics"]
    return "\n".join(rows + [f"pre - post digit gap {summary['digit_gap']['mean']:+.3f} +- "
                              f"{summary['digit_gap']['std']:.3f}; final loss {diagnostics['final_loss']:.4f}; "
                              f"{diagnostics['wall_time']:.1f} s ({diagnostics['images_per_second']:.0f} images/s)"])


def predict(config: PixelsConfig):
    """No closed form on pixels: the linear theory's prediction is qualitative (see docs/pixels.md)."""


EXPERIMENT = Experiment(name=NAME, config=PixelsConfig, run_batch=run_batch, result=PixelsResult,
                        shape_key=shape_key, predict=predict, report=report, table=table,
                        command=Command(), doc=__doc__)
