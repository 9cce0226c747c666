"""Non-linearity: a ReLU encoder keeps a sign-flipped feature that the head (and a linear net) drops.

Run:  python -m simulations nonlinear [--quick] [--seed S] --json
Expected runtime: ~10-20 s on 2 idle CPU cores, most of it compilation (--quick: the same
training, smaller probe sets).

Data (independent features, simulations.data presets): feature 0 is N(0, s0^2) whose sign is
flipped independently in each view with probability q (default 1/2: E[x0 x0+] = 0, the linear
attribute x0 is destroyed while |x0| is kept and varies); features 1.. are invariant (x+ = x).
Two networks of the same widths are trained on the same minibatches (fresh samples every step,
minibatch gradient descent, one jitted lax.scan, time = learning_rate x step) with the sampled
spectral contrastive loss (or InfoNCE):

* ReLU: by default the diagonal network of simulations.models.relu (each input coordinate feeds its own
  pair of channels relu(+u x_j), relu(-u' x_j), then a linear head of width k = 2 d), from the
  paired init (orientations +,- per feature, magnitude eps); ``network="full"`` uses a full
  two-layer ReLU net of width ``width`` instead.
* linear: h = W x, z = V h with the same widths and the same Gaussian init law as the full ReLU net.

Then every layer is probed with the library's normalized ridge probe (simulations.probe; ridge
0.1 on the representation scaled to unit total variance, n_train training and n_test fresh test
inputs) for the value x_j and the magnitude |x_j| of every feature; decodability is R^2 on the
fresh test set. "pre" is the encoder output after the ReLU (h), "post" the head output (z).

Why the defaults (measured in the README section): an unlearned direction keeps its init scale,
so the linear net's x0 and the odd part of the ReLU head stay decodable (R^2 0.1-0.9) without
weight decay. Weight decay 0.05 for time T = 100 shrinks them by e^-5; the init magnitude 0.5 sits
above the weight-decay unstable root (~sqrt(wd / 2) = 0.16) so every learned channel survives.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from simulations import data
from simulations.models import relu
from simulations.flow import FlowDivergenceError
from simulations.losses import info_nce_loss, spectral_loss
from simulations.probe import normalized_ridge_probe
from theory import relu_diagonal
from theory.checks import as_finite_array, check_choice, check_float, check_int

NETWORKS = ("diagonal", "full")
LOSSES = ("spectral", "info_nce")
ATTRIBUTES = ("value", "magnitude")
LAYERS = ("pre", "post")
NETS = ("relu", "linear")

#: Probe penalty on the variance-normalized representation (as in the downstream experiment): a
#: feature holding a share q of the layer's variance is decoded with R^2 ~ 1 - (0.1 / (q + 0.1))^2,
#: so a learned feature (q ~ 0.3) gives ~0.94 and an init-scale remnant (q ~ 1e-4) ~ 0.002.
DEFAULT_RIDGE = 0.1
#: Probe training / fresh test inputs. The R^2 of a dead target on n_test fresh samples has
#: standard deviation ~ sqrt(2 / n_test) ~ 0.014 (and a bias of -k / n_train from fitting noise).
DEFAULT_N_TRAIN = 10_000
DEFAULT_N_TEST = 10_000

# Named key streams under the root key PRNGKey(seed).
_INIT_STREAM, _TRAIN_STREAM, _PROBE_TRAIN_STREAM, _PROBE_TEST_STREAM = 0, 1, 2, 3


@dataclasses.dataclass(frozen=True, kw_only=True)
class NonlinearConfig:
    """One non-linear experiment (every default documented in the module docstring and --help).

    Attributes:
        flip_probability: q of feature 0's sign flip, in [0, 1/2]. Default 1/2.
        flipped_std: s0 > 0 of feature 0. Default 1.
        invariant_stds: stds of the invariant features (x+ = x), at least one. Default (1, 1).
        network: "diagonal" (default) or "full" ReLU network.
        group: channels per input coordinate of the diagonal network (>= 1). Default 2.
        width: hidden width of the full ReLU net; None means d * group (the diagonal net's width,
            also the linear net's hidden width).
        output_dim: head width k; None means the hidden width.
        loss: "spectral" (sampled unbiased estimator) or "info_nce" (temperature ``temperature``).
        temperature: InfoNCE temperature > 0.
        init_scale: eps: diagonal channels start at |u| = eps (paired orientations), heads and
            full layers N(0, eps^2 / fan_in). Default 0.5.
        weight_decay: (wd / 2) |params|^2 added to both nets' losses. Default 0.05.
        learning_rate: gradient-descent step (time = learning_rate x step). Default 0.02.
        steps: gradient steps (a multiple of record_every). Default 5000 (time 100).
        batch_size: fresh pairs per step. Default 256.
        record_every: steps between recorded parameters. Default 100.
        ridge: probe penalty. Default 0.1.
        n_train, n_test: probe training and fresh test inputs. Default 10,000 each.
        seed: root seed (init, minibatches, probe samples).
    """

    flip_probability: float = 0.5
    flipped_std: float = 1.0
    invariant_stds: tuple[float, ...] = (1.0, 1.0)
    network: str = "diagonal"
    group: int = 2
    width: int | None = None
    output_dim: int | None = None
    loss: str = "spectral"
    temperature: float = 0.5
    init_scale: float = 0.5
    weight_decay: float = 0.05
    learning_rate: float = 0.02
    steps: int = 5000
    batch_size: int = 256
    record_every: int = 100
    ridge: float = DEFAULT_RIDGE
    n_train: int = DEFAULT_N_TRAIN
    n_test: int = DEFAULT_N_TEST
    seed: int = 0

    def __post_init__(self):
        check_float("flip_probability", self.flip_probability, minimum=0.0, maximum=0.5)
        check_float("flipped_std", self.flipped_std, minimum=0.0, strict_minimum=True)
        stds = as_finite_array("invariant_stds", self.invariant_stds, ndim=1)
        if stds.size < 1 or np.any(stds <= 0):
            raise ValueError(f"invariant_stds must hold at least one std > 0, got {stds.tolist()}")
        object.__setattr__(self, "invariant_stds", tuple(float(s) for s in stds))
        check_choice("network", self.network, NETWORKS)
        check_int("group", self.group, minimum=1)
        if self.width is not None:
            check_int("width", self.width, minimum=1)
        if self.output_dim is not None:
            check_int("output_dim", self.output_dim, minimum=1)
        check_choice("loss", self.loss, LOSSES)
        check_float("temperature", self.temperature, minimum=0.0, strict_minimum=True)
        check_float("init_scale", self.init_scale, minimum=0.0, strict_minimum=True)
        check_float("weight_decay", self.weight_decay, minimum=0.0)
        check_float("learning_rate", self.learning_rate, minimum=0.0, strict_minimum=True)
        check_int("record_every", self.record_every, minimum=1)
        check_int("steps", self.steps, minimum=1)
        if self.steps % self.record_every:
            raise ValueError(f"steps must be a multiple of record_every={self.record_every}, got {self.steps}")
        check_int("batch_size", self.batch_size, minimum=2)
        check_float("ridge", self.ridge, minimum=0.0)
        check_int("n_train", self.n_train, minimum=2)
        check_int("n_test", self.n_test, minimum=2)
        check_int("seed", self.seed, minimum=0)

    @classmethod
    def quick(cls, **overrides) -> "NonlinearConfig":
        """The contract's quick run: the same training, smaller probe sets (seconds)."""
        return cls(**{"n_train": 4_000, "n_test": 4_000, **overrides})

    @property
    def dim(self) -> int:
        return 1 + len(self.invariant_stds)

    @property
    def hidden_width(self) -> int:
        if self.network == "full" and self.width is not None:
            return self.width
        return self.dim * self.group

    @property
    def head_width(self) -> int:
        return self.output_dim or self.hidden_width

    @property
    def stds(self) -> np.ndarray:
        return np.asarray((self.flipped_std,) + self.invariant_stds)

    @property
    def strengths(self) -> np.ndarray:
        return np.asarray((self.flip_probability,) + (0.0,) * len(self.invariant_stds))

    @property
    def kinds(self) -> tuple[str, ...]:
        return ("sign_flip",) * self.dim

    def pairs(self) -> data.AugmentedPairs:
        """The pair distribution (feature 0 sign-flipped with probability q, the rest invariant)."""
        return data.product_pairs([data.sign_flip(float(s), float(q)) for s, q in zip(self.stds, self.strengths)])

    def laws(self) -> relu_diagonal.FeatureLaws:
        return relu_diagonal.FeatureLaws(kinds=self.kinds, stds=self.stds, strengths=self.strengths)


CONFIG = NonlinearConfig

#: Numeric outputs of fixed shape per shape_key, for the sweep engine.
SWEEP_OUTPUTS = ("r2", "final_loss", "predicted_r2", "population_r2")


def shape_key(config: NonlinearConfig) -> tuple:
    """Fields that change array shapes or the compiled program (equal keys share a batch)."""
    # InfoNCE's temperature is a compile-time constant (losses.info_nce_loss validates it in Python).
    temperature = config.temperature if config.loss == "info_nce" else None
    return (config.network, config.dim, config.group, config.hidden_width, config.head_width, config.loss, temperature,
            config.steps, config.record_every, config.batch_size, config.n_train, config.n_test)


def _linear_apply(params, x):
    h = x @ params.encoder.T
    return h, h @ params.head.T


def _relu_apply(params, x):
    return relu.apply_relu(params, x)


def initialize(config: NonlinearConfig):
    """(ReLU params, linear params) at init; the linear net uses the full ReLU net's init law."""
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), _INIT_STREAM)
    key_relu, key_linear = jax.random.split(key)
    if config.network == "diagonal":
        relu_params = relu.init_diagonal_relu_paired(key_relu, config.dim, config.group, config.head_width,
                                                     init_scale=config.init_scale)
    else:
        relu_params = relu.init_relu(key_relu, config.dim, config.hidden_width, config.head_width,
                                     init_scale=config.init_scale)
    linear_params = relu.init_relu(key_linear, config.dim, config.hidden_width, config.head_width,
                                   init_scale=config.init_scale)
    return relu_params, linear_params


def _batch_loss(kind, params, x, x_pos, weight_decay, temperature):
    total = 0.0
    for apply, p in ((_relu_apply, params[0]), (_linear_apply, params[1])):
        z, z_pos = apply(p, x)[1], apply(p, x_pos)[1]
        total = total + (spectral_loss(z, z_pos) if kind == "spectral" else info_nce_loss(z, z_pos, temperature))
    squares = sum(jnp.sum(leaf * leaf) for leaf in jax.tree_util.tree_leaves(params))
    return total + 0.5 * weight_decay * squares


def _probe_all(params, key, stds, strengths, ridge, *, kinds, n_train, n_test):
    """R^2 (nets, layers, attributes, d) of the normalized ridge probe on fresh test inputs."""
    x_train = data.sample_product(jax.random.fold_in(key, _PROBE_TRAIN_STREAM), stds, strengths,
                                   n=n_train, kinds=kinds)[0]
    x_test = data.sample_product(jax.random.fold_in(key, _PROBE_TEST_STREAM), stds, strengths,
                                  n=n_test, kinds=kinds)[0]
    # Targets (attributes, d): one vmapped probe per representation keeps the compiled program small.
    targets_train = jnp.stack([x_train.T, jnp.abs(x_train).T])
    targets_test = jnp.stack([x_test.T, jnp.abs(x_test).T])
    out = []
    for apply, p in ((_relu_apply, params[0]), (_linear_apply, params[1])):
        reps_train, reps_test = apply(p, x_train), apply(p, x_test)
        per_layer = []
        for r_train, r_test in zip(reps_train, reps_test):
            probe = jax.vmap(jax.vmap(lambda y_train, y_test: normalized_ridge_probe(
                r_train, y_train, r_test, y_test, ridge).r2))
            per_layer.append(probe(targets_train, targets_test))
        out.append(jnp.stack(per_layer))
    return jnp.stack(out)


@functools.partial(jax.jit, static_argnames=("kinds", "loss", "temperature", "steps", "record_every", "batch_size",
                                             "n_train", "n_test"))
def _program(params0, key, learning_rate, weight_decay, stds, strengths, ridge, *, kinds, loss, temperature,
             steps, record_every, batch_size, n_train, n_test):
    """Train both nets on shared fresh minibatches, then probe; vmapped over the leading axis."""

    def one(params0, key, learning_rate, weight_decay, stds, strengths, ridge):
        train_key = jax.random.fold_in(key, _TRAIN_STREAM)
        grad = jax.value_and_grad(lambda p, x, xp: _batch_loss(loss, p, x, xp, weight_decay, temperature))

        def step(params, index):
            x, x_pos = data.sample_product(jax.random.fold_in(train_key, index), stds, strengths,
                                            n=batch_size, kinds=kinds)
            value, g = grad(params, x, x_pos)
            return jax.tree_util.tree_map(lambda p, gp: p - learning_rate * gp, params, g), value

        def record(params, block):
            params, values = jax.lax.scan(step, params, block * record_every + jnp.arange(record_every))
            return params, (params, values[-1])

        params, (trajectory, losses) = jax.lax.scan(record, params0, jnp.arange(steps // record_every))
        r2 = _probe_all(params, key, stds, strengths, ridge, kinds=kinds, n_train=n_train, n_test=n_test)
        return params, trajectory, losses, r2

    return jax.vmap(one)(params0, key, learning_rate, weight_decay, stds, strengths, ridge)


def population_descent(params0, laws: relu_diagonal.FeatureLaws, *, learning_rate: float, steps: int,
                       record_every: int = 100, weight_decay: float = 0.0):
    """Gradient descent on the exact population loss of a diagonal net (one jitted lax.scan).

    The deterministic twin of the sampled training (same step, same time axis): with a small
    step it follows gradient flow, whose end point theory.relu_diagonal.fixed_point predicts.

    Returns:
        (params, trajectory (leaves with a leading steps // record_every axis), times).
    """
    learning_rate = check_float("learning_rate", learning_rate, minimum=0.0, strict_minimum=True)
    steps, record_every = check_int("steps", steps, minimum=1), check_int("record_every", record_every, minimum=1)
    if steps % record_every:
        raise ValueError(f"steps must be a multiple of record_every={record_every}, got {steps}")
    params, trajectory = _population_descent(params0, jnp.asarray(laws.stds), jnp.asarray(laws.strengths),
                                             learning_rate, weight_decay, kinds=laws.kinds,
                                             blocks=steps // record_every, record_every=record_every)
    times = learning_rate * record_every * (np.arange(steps // record_every) + 1)
    return params, trajectory, times


@functools.partial(jax.jit, static_argnames=("kinds", "blocks", "record_every"))
def _population_descent(params0, stds, strengths, learning_rate, weight_decay, *, kinds, blocks, record_every):
    laws = relu_diagonal.FeatureLaws(kinds=kinds, stds=stds, strengths=strengths)
    grad = jax.grad(lambda p: relu_diagonal.population_loss(p, laws, weight_decay))

    def step(params, _):
        return jax.tree_util.tree_map(lambda p, g: p - learning_rate * g, params, grad(params)), None

    def record(params, _):
        params, _ = jax.lax.scan(step, params, None, length=record_every)
        return params, params

    return jax.lax.scan(record, params0, None, length=blocks)


def _stack(trees):
    return jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *trees)


def run_nonlinear_batch(configs: Sequence[NonlinearConfig], *, place=None) -> list[dict[str, Any]]:
    """Run configs sharing :func:`shape_key` as one vmapped, jitted program.

    Seeds, q, stds, learning rate, weight decay, init scale and ridge are traced, so changing them
    never recompiles (InfoNCE's temperature is static, part of :func:`shape_key`). ``place``
    (optional) is applied to every stacked per-point
    pytree before it enters the program (the sweep engine shards the point axis with it).

    Returns one dict per config: ``r2`` (nets (relu, linear), layers (pre, post), attributes
    (value, magnitude), d) R^2 on fresh test data; ``summary`` (the CLI's JSON object);
    ``times``, ``losses`` (R,); ``trajectory`` (ReLU encoder at the recorded times); ``params``;
    for the diagonal net ``predicted_r2`` (the same shape as r2[0]: the closed-form fixed point
    without weight decay, population probe) and ``population_r2`` (population probe of the trained
    ReLU net), ``fixed_point`` (theory.relu_diagonal.FixedPoint); and ``diagnostics``.
    """
    configs = list(configs)
    if not configs:
        raise ValueError("configs must hold at least one NonlinearConfig")
    keys = {shape_key(c) for c in configs}
    if len(keys) != 1:
        raise ValueError(f"configs must share shape_key to run as one batch, got {sorted(keys, key=str)}")
    first = configs[0]
    place = place or (lambda tree: tree)
    with jax.enable_x64(True):
        params0 = place(_stack([initialize(c) for c in configs]))
        key = place(jnp.stack([jax.random.PRNGKey(c.seed) for c in configs]))
        floats = place(tuple(jnp.asarray(v, dtype=jnp.float64) for v in (
            [c.learning_rate for c in configs], [c.weight_decay for c in configs],
            np.stack([c.stds for c in configs]), np.stack([c.strengths for c in configs]),
            [c.ridge for c in configs])))
        params, trajectory, losses, r2 = _program(
            params0, key, *floats, kinds=first.kinds, loss=first.loss,
            temperature=first.temperature if first.loss == "info_nce" else None, steps=first.steps,
            record_every=first.record_every, batch_size=first.batch_size, n_train=first.n_train, n_test=first.n_test)
        losses, r2 = np.asarray(losses), np.asarray(r2)
        outputs = []
        for index, config in enumerate(configs):
            finite = np.isfinite(losses[index])
            if not finite.all():
                step = (int(np.argmin(finite)) + 1) * config.record_every
                raise FlowDivergenceError(
                    f"nonlinear training diverged: non-finite loss by step {step} (time "
                    f"{step * config.learning_rate:.4g}, seed {config.seed}). Remedy: lower learning_rate "
                    f"(now {config.learning_rate}) or init_scale (now {config.init_scale}).")
            point_params = jax.tree_util.tree_map(lambda leaf: np.asarray(leaf[index]), params)
            times = config.learning_rate * config.record_every * (np.arange(config.steps // config.record_every) + 1)
            result = {
                "config": dataclasses.asdict(config),
                "r2": r2[index],
                "summary": summarize(r2[index]),
                "times": times,
                "losses": losses[index],
                "final_loss": float(losses[index][-1]),
                "trajectory": np.asarray(trajectory[0].encoder[index]),
                "head_trajectory": np.asarray(trajectory[0].head[index]),
                "params": point_params,
                "diagnostics": {"n_train": config.n_train, "n_test": config.n_test, "ridge": config.ridge,
                                "time": float(times[-1])},
            }
            result.update(_theory(config, point_params[0]))
            outputs.append(result)
    return outputs


def _theory(config: NonlinearConfig, relu_params) -> dict[str, Any]:
    """Closed-form fixed point and population probes (diagonal, bias-free, g <= 2 only)."""
    if config.network != "diagonal" or config.group > 2:
        nan = np.full((len(LAYERS), len(ATTRIBUTES), config.dim), np.nan)
        return {"predicted_r2": nan, "population_r2": nan, "fixed_point": None}
    laws = config.laws()
    signs = np.where(np.arange(config.group) % 2 == 0, 1.0, -1.0)[None, :].repeat(config.dim, 0)
    point = relu_diagonal.fixed_point(laws, signs, config.head_width)
    predicted = relu_diagonal.predicted_decodability(laws, signs, config.head_width, ridge=config.ridge)
    population = relu_diagonal.decodability(relu_params, laws, ridge=config.ridge)

    def as_array(values):
        return np.asarray([[values[layer][a] for a in ATTRIBUTES] for layer in LAYERS])

    return {"predicted_r2": as_array(predicted), "population_r2": as_array(population), "fixed_point": point}


def summarize(r2: np.ndarray) -> dict[str, dict[str, dict[str, float]]]:
    """The CLI's public JSON object from r2 (nets, layers, attributes, d).

    sign_flipped: R^2 of the value x_0 (the sign-flipped feature); invariant: the smallest R^2 of
    the value x_j over the invariant features j >= 1 (the weakest one, so the claim holds for all).
    """
    value = ATTRIBUTES.index("value")
    return {net: {layer: {"sign_flipped": float(r2[n, l, value, 0]),
                          "invariant": float(np.min(r2[n, l, value, 1:]))}
                  for l, layer in enumerate(LAYERS)}
            for n, net in enumerate(NETS)}


def run_nonlinear(config: NonlinearConfig, *, place=None) -> dict[str, Any]:
    """:func:`run_nonlinear_batch` of one config."""
    return run_nonlinear_batch([config], place=place)[0]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `nonlinear` subcommand's flags (public contract: --quick, --seed, --json and the JSON keys)."""
    defaults = NonlinearConfig()
    parser.add_argument("--quick", action="store_true",
                        help="the same training with smaller probe sets (n_train = n_test = 4000)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="root seed (default %(default)s)")
    parser.add_argument("--flip-probability", type=float, default=defaults.flip_probability,
                        help="sign-flip probability q of feature 0 per view (default %(default)s)")
    parser.add_argument("--network", choices=NETWORKS, default=defaults.network,
                        help="ReLU network structure (default %(default)s)")
    parser.add_argument("--width", type=int, default=None, help="hidden width of the full ReLU net (default: 2 d)")
    parser.add_argument("--loss", choices=LOSSES, default=defaults.loss, help="training loss (default %(default)s)")
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay,
                        help="penalty (wd/2) |params|^2 on both nets (default %(default)s)")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="gradient steps (default %(default)s)")
    parser.add_argument("--out", default="results/nonlinear", help="where to save results without --json")
    parser.add_argument("--json", action="store_true",
                        help='print one JSON object {"relu": {"pre": {"sign_flipped", "invariant"}, "post": ...}, '
                             '"linear": {...}} (R^2 on fresh test data) and save nothing')


def main(args: argparse.Namespace) -> int:
    overrides = dict(seed=args.seed, flip_probability=args.flip_probability, network=args.network,
                     width=args.width, loss=args.loss, weight_decay=args.weight_decay, steps=args.steps)
    config = NonlinearConfig.quick(**overrides) if args.quick else NonlinearConfig(**overrides)
    result = run_nonlinear(config)
    if args.json:
        print(json.dumps(result["summary"]))
        return 0
    from simulations.results import save_results

    print(format_table(result))
    npz, _ = save_results(args.out, "nonlinear", {k: result[k] for k in
                          ("r2", "predicted_r2", "population_r2", "times", "losses", "trajectory")},
                          {"config": result["config"], "seed": config.seed, "summary": result["summary"],
                           "diagnostics": result["diagnostics"]})
    print(f"saved {npz} and its .json record", file=sys.stderr)
    return 0


def format_table(result: dict[str, Any]) -> str:
    """Readable R^2 table: net, layer, attribute, per feature (feature 0 is sign-flipped)."""
    r2 = result["r2"]
    d = r2.shape[-1]
    lines = ["net     layer  attribute  " + "  ".join(f"x{j}{'(flip)' if j == 0 else '':6s}" for j in range(d))]
    for n, net in enumerate(NETS):
        for l, layer in enumerate(LAYERS):
            for a, attribute in enumerate(ATTRIBUTES):
                lines.append(f"{net:7s} {layer:5s}  {attribute:9s}  " + "  ".join(f"{v:10.4f}" for v in r2[n, l, a]))
    return "\n".join(lines)
