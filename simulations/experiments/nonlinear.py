"""Non-linearity: a ReLU encoder keeps a sign-flipped feature that the head (and a linear net) drops.

Run:  python -m simulations nonlinear [--quick] [--seed S] --json
Expected runtime: ~10-20 s on 2 idle CPU cores, most of it compilation (--quick: the same
training, smaller probe sets).

Data (independent features, simulations.data presets): feature 0 is N(0, s0^2) whose sign is
flipped independently in each view with probability q (default 1/2: E[x0 x0+] = 0, the linear
attribute x0 is destroyed while |x0| is kept and varies); features 1.. are invariant (x+ = x).
Two networks of the same widths are trained on the same fresh minibatches by the library's
trainer (simulations.train: one jitted lax.scan, time = learning_rate x step) on the sum of their
sampled spectral contrastive (or InfoNCE) losses:

* ReLU: by default the diagonal network of simulations.models.relu (each input coordinate feeds its own
  pair of channels relu(+u x_j), relu(-u' x_j), then a linear head of width k = 2 d), from the
  paired init (orientations +,- per feature, magnitude eps); ``network="full"`` uses a full
  two-layer ReLU net of width ``width`` instead.
* linear: h = W x, z = V h with the same widths and the same Gaussian init law as the full ReLU net.

Then every layer is probed with the library's normalized ridge probe (simulations.probe; ridge
0.1 on the representation scaled to unit total variance, n_train training and n_test fresh test
inputs) for the value x_j and the magnitude |x_j| of every feature; decodability is R^2 on the
fresh test set. "pre" is the encoder output after the ReLU (h), "post" the head output (z).

Why the defaults (docs/nonlinear.md): an unlearned direction keeps its init scale, so the linear
net's x0 and the odd part of the ReLU head stay decodable (R^2 0.1-0.9) without weight decay.
Weight decay 0.05 for time T = 100 shrinks them by e^-5; the init magnitude 0.5 sits above the
weight-decay unstable root (~sqrt(wd / 2) = 0.16) so every learned channel survives.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from simulations import data, draws
from simulations.experiment import Command, Experiment, check_one_shape, stack
from simulations.experiments import nonlinear_common as common
from simulations.experiments.nonlinear_common import ATTRIBUTES, LAYERS, NETS, NonlinearResult, initialize, predict
from simulations.programs import stored_jit
from simulations.train import check_finite, check_steps, descend, record_times
from theory import relu_diagonal
from theory.checks import as_finite_array, check_choice, check_float, check_int

#: Shared with the head comparison and the figures (simulations.experiments.nonlinear_common).
population_descent = common.population_descent

NETWORKS = ("diagonal", "full")
LOSSES = ("spectral", "info_nce")


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
    network: str = dataclasses.field(default="diagonal", metadata={"choices": NETWORKS})
    group: int = 2
    width: int | None = None
    output_dim: int | None = None
    loss: str = dataclasses.field(default="spectral", metadata={"choices": LOSSES})
    temperature: float = 0.5
    init_scale: float = 0.5
    weight_decay: float = 0.05
    learning_rate: float = 0.02
    steps: int = 5000
    batch_size: int = 256
    record_every: int = 100
    ridge: float = common.DEFAULT_RIDGE
    n_train: int = common.DEFAULT_N_TRAIN
    n_test: int = common.DEFAULT_N_TEST
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
        check_steps(self.steps, self.record_every)
        check_int("batch_size", self.batch_size, minimum=2)
        check_float("ridge", self.ridge, minimum=0.0)
        check_int("n_train", self.n_train, minimum=2)
        check_int("n_test", self.n_test, minimum=2)
        check_int("seed", self.seed, minimum=0)

    @classmethod
    def quick(cls, **overrides) -> NonlinearConfig:
        """The quick run: the same training, smaller probe sets (seconds)."""
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


def shape_key(config: NonlinearConfig) -> tuple:
    """Fields that change array shapes or the compiled program (equal keys share a batch)."""
    # InfoNCE's temperature is a compile-time constant (losses.info_nce_loss validates it in Python).
    temperature = config.temperature if config.loss == "info_nce" else None
    return (config.network, config.dim, config.group, config.hidden_width, config.head_width, config.loss, temperature,
            config.steps, config.record_every, config.batch_size, config.n_train, config.n_test)


@functools.partial(stored_jit, static_argnames=("kinds", "loss", "temperature", "steps", "record_every", "batch_size",
                                                "n_train", "n_test"))
def _program(params0, key, learning_rate, weight_decay, stds, strengths, ridge, *, kinds, loss, temperature,
             steps, record_every, batch_size, n_train, n_test):
    """Train both nets on shared fresh minibatches, then probe; vmapped over the leading axis."""
    contrastive = common.pair_loss(loss, temperature)

    def one(params0, key, learning_rate, weight_decay, stds, strengths, ridge):
        train_key = draws.fold_in(key, common.TRAIN_STREAM)

        def objective(params, pairs):
            x, x_pos = pairs
            per_net = [contrastive(common.APPLY[net](p, x)[1], common.APPLY[net](p, x_pos)[1])
                       for net, p in zip(NETS, params)]
            return per_net[0] + per_net[1], jnp.stack(per_net)

        out = descend(objective, params0, steps=steps, record_every=record_every, learning_rate=learning_rate,
                      weight_decay=weight_decay, has_aux=True, batch=lambda index: data.sample_product(
                          draws.fold_in(train_key, index), stds, strengths, n=batch_size, kinds=kinds))
        r2 = common.probe_all(out.params, key, stds, strengths, ridge, kinds=kinds, n_train=n_train, n_test=n_test)
        return out, r2

    return jax.vmap(one)(params0, key, learning_rate, weight_decay, stds, strengths, ridge)


def run_batch(configs: Sequence[NonlinearConfig], *, place=None) -> NonlinearResult:
    """Run configs sharing :func:`shape_key` as one vmapped, jitted program.

    Seeds, q, stds, learning rate, weight decay, init scale and ridge are traced, so changing them
    never recompiles (InfoNCE's temperature is static, part of :func:`shape_key`). ``place``
    (optional) is applied to every stacked per-point pytree before it enters the program.

    Raises:
        TrainingDivergenceError: a non-finite loss (names the step, the seed and a remedy).
    """
    configs = list(configs)
    check_one_shape(EXPERIMENT, configs)
    first = configs[0]
    place = place or (lambda tree: tree)
    with jax.enable_x64(True):
        params0 = place(stack([initialize(c) for c in configs]))
        key = place(jnp.stack([jax.random.PRNGKey(c.seed) for c in configs]))
        floats = place(tuple(jnp.asarray(v, dtype=jnp.float64) for v in (
            [c.learning_rate for c in configs], [c.weight_decay for c in configs],
            np.stack([c.stds for c in configs]), np.stack([c.strengths for c in configs]),
            [c.ridge for c in configs])))
        out, r2 = _program(
            params0, key, *floats, kinds=first.kinds, loss=first.loss,
            temperature=first.temperature if first.loss == "info_nce" else None, steps=first.steps,
            record_every=first.record_every, batch_size=first.batch_size, n_train=first.n_train, n_test=first.n_test)
        out, r2 = jax.tree_util.tree_map(np.asarray, out), np.asarray(r2)
        for index, config in enumerate(configs):
            check_finite(out.losses[index], record_every=config.record_every, learning_rate=config.learning_rate,
                         what=f"nonlinear training (seed {config.seed})",
                         remedy=f"init_scale (now {config.init_scale})")
        params = common.NonlinearParams(*out.params)
        theory = [common.theory_r2(config, jax.tree_util.tree_map(lambda leaf, i=index: leaf[i], params.relu))
                  for index, config in enumerate(configs)]
    times = np.stack([record_times(c.learning_rate, c.steps, c.record_every) for c in configs])
    diagnostics = common.NonlinearDiagnostics(final_loss=out.losses[:, -1], final_loss_by_net=out.aux[:, -1],
                                       steps=np.asarray([c.steps for c in configs]), time=times[:, -1])
    return NonlinearResult(r2=r2, predicted_r2=np.stack([t[0] for t in theory]),
                           population_r2=np.stack([t[1] for t in theory]), times=times, losses=out.losses,
                           losses_by_net=out.aux, trajectory=out.trajectory[0].encoder,
                           head_trajectory=out.trajectory[0].head, params=params, diagnostics=diagnostics)


def summarize(r2: np.ndarray) -> dict[str, dict[str, dict[str, float]]]:
    """The public R^2 object from r2 (nets, layers, attributes, d).

    sign_flipped: R^2 of the value x_0 (the sign-flipped feature); invariant: the smallest R^2 of
    the value x_j over the invariant features j >= 1 (the weakest one, so the claim holds for all).
    """
    value = ATTRIBUTES.index("value")
    return {net: {layer: {"sign_flipped": float(r2[n, l, value, 0]),
                          "invariant": float(np.min(r2[n, l, value, 1:]))}
                  for l, layer in enumerate(LAYERS)}
            for n, net in enumerate(NETS)}


def report(point: NonlinearResult, config: NonlinearConfig) -> dict:
    """``--json``: {"relu": {"pre": {"sign_flipped", "invariant"}, "post": ...}, "linear": ..., "diagnostics"}."""
    d = point.diagnostics
    return {**summarize(point.r2), "diagnostics": {
        "steps": int(d.steps), "time": float(d.time), "final_loss": float(d.final_loss),
        "final_loss_by_net": {net: float(d.final_loss_by_net[n]) for n, net in enumerate(NETS)}}}


def table(point: NonlinearResult, config: NonlinearConfig) -> str:
    """Readable R^2 table: net, layer, attribute, per feature (feature 0 is sign-flipped)."""
    r2 = point.r2
    d = r2.shape[-1]
    lines = ["net     layer  attribute  " + "  ".join(f"x{j}{'(flip)' if j == 0 else '':6s}" for j in range(d))]
    for n, net in enumerate(NETS):
        for l, layer in enumerate(LAYERS):
            for a, attribute in enumerate(ATTRIBUTES):
                lines.append(f"{net:7s} {layer:5s}  {attribute:9s}  " + "  ".join(f"{v:10.4f}" for v in r2[n, l, a]))
    diag = report(point, config)["diagnostics"]
    lines.append(f"steps={diag['steps']} time={diag['time']:.4g} final minibatch loss {diag['final_loss']:.6g} "
                 f"(relu {diag['final_loss_by_net']['relu']:.6g}, linear {diag['final_loss_by_net']['linear']:.6g})")
    return "\n".join(lines)


EXPERIMENT = Experiment(
    name="nonlinear", config=NonlinearConfig, run_batch=run_batch, result=NonlinearResult, shape_key=shape_key,
    predict=predict, report=report, table=table, doc=__doc__,
    command=Command(help={"width": "hidden width of the full ReLU net (default: d * group)"}))
