"""Supervised contrastive and supervised learning: class collapse above the head, subclasses below it.

Run:  python -m simulations supervised [--quick] [--seed S] --json
Expected runtime: --quick ~25 s of CPU time from a cold compile cache (two compiled programs), a
few seconds once cached; the default (3,000 steps) about twice the training time.

A two-layer ReLU network h = relu(W x), z = V h (head) is trained by minibatch descent on fresh
samples (simulations.train; time = learning_rate x step) on one of two tasks
(simulations.data.mixtures): ``coarse_to_fine`` (coarse classes made of two subclasses at +-mu e_c;
the fine label is probed at the input, at h ("pre") and at z ("post", the head's output, not the
logits): R^2 of the normalized ridge probe on fresh data) and ``shift`` (a non-linear core feature
and a linear spurious one that agrees with the label with probability ``agreement``; the last
layer is retrained on group-balanced data at every layer: worst-group and average accuracy).
Losses on z: supervised spectral contrastive, SupCon, or cross-entropy / squared loss through a
linear classifier.

The command runs three configurations sharing every flag: "supcon" (coarse_to_fine, loss
``--contrastive-form``), "cross_entropy" (coarse_to_fine) and "shift" (cross-entropy). The head's
untrained directions keep an init-scale copy of h: the spectral loss removes it, cross-entropy does
not, so with cross-entropy the collapse seen by the probe needs a small init (default 0.05) or
weight decay (docs/supervised.md).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from simulations import draws
from simulations import losses as slosses
from simulations.data import mixtures as sdata
from simulations.data.mixtures import TASKS
from simulations.experiment import Command, Experiment, check_one_shape
from simulations.experiments import supervised_common as common
from simulations.experiments.supervised_common import CONTRASTIVE, LAYERS, LOSSES, NETWORKS, SupervisedResult
from simulations.programs import stored_jit
from simulations.train import check_finite, descend
from theory.checks import check_choice, check_float, check_int

#: Steps between two recorded minibatch losses (each record is the block's mean; steps must be a multiple).
RECORD_EVERY = 50
#: Default noise std per task (the shift task's core feature must be imperfect for the spurious
#: one to matter: at 0.3 the core alone classifies ~90% of the minority groups).
DEFAULT_NOISE = {"coarse_to_fine": 0.2, "shift": 0.3}
#: Traced per-point hyperparameters (changing them never recompiles).
TRACED = ("separation", "spurious_strength", "agreement", "noise_std", "class_offset", "augment_std",
          "init_scale", "classifier_init_scale", "weight_decay", "learning_rate", "temperature", "ridge")
#: The command's three runs, in order.
ARMS = ("supcon", "cross_entropy", "shift")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SupervisedConfig:
    """One supervised run: a task, a loss and a network, trained and probed.

    Attributes:
        task: "coarse_to_fine" or "shift".
        loss: "spectral" (supervised spectral contrastive on z), "infonce" (SupCon on z),
            "cross_entropy" or "squared" (through a linear classifier on z).
        network: "relu" (h = relu(W x)) or "linear" (h = W x).
        dim: input dimension d (>= num_classes, >= 2 num_classes with class_offset; >= 2 for shift).
        num_classes: coarse classes C >= 2 (coarse_to_fine; shift is binary).
        separation: mu > 0, subclass distance from the origin (the core strength for shift).
        spurious_strength: the spurious feature's mean magnitude (shift).
        agreement: P(spurious attribute = label) in training, in [0, 1] (shift).
        noise_std: isotropic input noise; None means DEFAULT_NOISE[task].
        class_offset: nu >= 0, linear class signal nu e_(C + c) (coarse_to_fine).
        augment_std: additive Gaussian augmentation of every training view.
        width: ReLU channels m. head_dim: head outputs k.
        init_scale: eps, fan-in-scaled Gaussian init of W and V (entries N(0, eps^2 / fan_in)).
        classifier_init_scale: entries of the classifier U are N(0, scale^2 / k).
        weight_decay: (wd / 2) (||W||^2 + ||V||^2) (the classifier is not decayed).
        learning_rate, steps, batch_size: gradient descent on fresh minibatches.
        temperature: SupCon temperature.
        ridge: probe penalty on the variance-normalized representation.
        n_probe: probe / last-layer-retraining samples. n_test: fresh test samples.
        seed: root seed (init, training batches, probe data).
    """

    task: str = dataclasses.field(default="coarse_to_fine", metadata={"choices": TASKS})
    loss: str = dataclasses.field(default="spectral", metadata={"choices": LOSSES})
    network: str = dataclasses.field(default="relu", metadata={"choices": NETWORKS})
    dim: int = 6
    num_classes: int = 2
    separation: float = 1.0
    spurious_strength: float = 1.0
    agreement: float = 0.95
    noise_std: float | None = None
    class_offset: float = 0.0
    augment_std: float = 0.0
    width: int = 32
    head_dim: int = 8
    init_scale: float = 0.05
    classifier_init_scale: float = 1.0
    weight_decay: float = 0.0
    learning_rate: float = 0.3
    steps: int = 3000
    batch_size: int = 256
    temperature: float = 0.5
    ridge: float = 0.01
    n_probe: int = 4000
    n_test: int = 10000
    seed: int = 0

    def __post_init__(self):
        check_choice("task", self.task, TASKS)
        check_choice("loss", self.loss, LOSSES)
        check_choice("network", self.network, NETWORKS)
        C = check_int("num_classes", self.num_classes, minimum=2)
        if self.task == "shift" and C != 2:
            raise ValueError(f"num_classes must be 2 for task 'shift' (binary label), got {C}")
        minimum_dim = 2 if self.task == "shift" else (2 * C if self.class_offset > 0 else C)
        check_int("dim", self.dim, minimum=minimum_dim)
        noise = DEFAULT_NOISE[self.task] if self.noise_std is None else self.noise_std
        object.__setattr__(self, "noise_std", check_float("noise_std", noise, minimum=0.0))
        for name in ("separation", "init_scale", "classifier_init_scale", "learning_rate", "temperature"):
            object.__setattr__(self, name, check_float(name, getattr(self, name), minimum=0.0, strict_minimum=True))
        for name in ("spurious_strength", "class_offset", "augment_std", "weight_decay", "ridge"):
            object.__setattr__(self, name, check_float(name, getattr(self, name), minimum=0.0))
        object.__setattr__(self, "agreement", check_float("agreement", self.agreement, minimum=0.0, maximum=1.0))
        check_int("width", self.width, minimum=1)
        check_int("head_dim", self.head_dim, minimum=1)
        check_int("steps", self.steps, minimum=RECORD_EVERY)
        if self.steps % RECORD_EVERY:
            raise ValueError(f"steps must be a multiple of {RECORD_EVERY}, got {self.steps}")
        check_int("batch_size", self.batch_size, minimum=4 * C)
        check_int("n_probe", self.n_probe, minimum=10)
        check_int("n_test", self.n_test, minimum=10)
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")

    @classmethod
    def quick(cls, **overrides) -> SupervisedConfig:
        """A seconds-long configuration (fewer steps and probe samples; the same conclusions)."""
        return cls(**{"steps": 2000, "n_probe": 2000, "n_test": 4000, **overrides})


def shape_key(config: SupervisedConfig) -> tuple:
    """Fields that change array shapes or the compiled program (equal keys can share a batch).

    The network kind and the choice among the spectral, cross-entropy and squared losses are
    traced (all three are evaluated and the chosen one kept), so such runs share a batch;
    SupCon (O(n^2) exponentials per step) gets its own program.
    """
    return (config.task, config.loss == "infonce", config.dim, config.num_classes, config.width, config.head_dim,
            config.steps, config.batch_size, config.n_probe, config.n_test)


def _point(config, key, hp):
    """Train one network and measure it (traced in key and hp; vmapped over points)."""
    train_mixture, eval_mixture = sdata.task_mixtures(config.task, config.dim, config.num_classes, hp)
    params0 = common.init_networks(draws.fold_in(key, common.INIT_STREAM), dim=config.dim, width=config.width,
                                   head_dim=config.head_dim, num_classes=config.num_classes,
                                   init_scale=hp["init_scale"], classifier_init_scale=hp["classifier_init_scale"])
    class_weights = sdata.class_weights(train_mixture, config.num_classes)
    train_key = draws.fold_in(key, common.TRAIN_STREAM)

    def objective(params, batch):
        net, classifier = params
        _, z = common.apply_network(net, batch.x, hp["linear"])
        if config.loss == "infonce":  # static: see shape_key
            return slosses.supcon_loss(z, batch.coarse, hp["temperature"])
        return common.mixed_loss_value(hp["loss_index"], z, classifier, batch.coarse, class_weights)

    trained = descend(objective, params0, steps=config.steps, record_every=RECORD_EVERY,
                      learning_rate=hp["learning_rate"], weight_decay=hp["weight_decay"],
                      decayed=lambda params: params[0], record="mean", record_params=False,
                      batch=lambda index: sdata.sample(train_mixture, draws.fold_in(train_key, index),
                                                       config.batch_size, augment_std=hp["augment_std"]))
    net, classifier = trained.params
    measured = common.measure(net, classifier, eval_mixture, key, hp, task=config.task, dim=config.dim,
                              num_classes=config.num_classes, width=config.width, head_dim=config.head_dim,
                              n_probe=config.n_probe, n_test=config.n_test)
    return (*measured, trained.losses)


@functools.partial(stored_jit, static_argnums=0)
def _program(config_template: SupervisedConfig, keys, hp):
    """Every point of one shape_key, vmapped (a config with that key stands for it)."""
    return jax.vmap(lambda key, point_hp: _point(config_template, key, point_hp))(keys, hp)


def _template(config: SupervisedConfig) -> SupervisedConfig:
    """A canonical config of the same shape_key (traced fields at their defaults) to key the cache."""
    defaults = SupervisedConfig()
    traced = {name: getattr(defaults, name) for name in TRACED}
    traced["noise_std"] = 0.2
    loss = "infonce" if config.loss == "infonce" else defaults.loss
    return dataclasses.replace(config, seed=0, loss=loss, network=defaults.network, **traced)


def run_batch(configs: Sequence[SupervisedConfig], *, place=None) -> SupervisedResult:
    """Run configurations sharing a shape_key as one vmapped, jitted program.

    Seeds and every float hyperparameter are traced (changing them never recompiles); each
    point's numbers do not depend on what else is in the batch. ``place`` (optional) is applied
    to every stacked per-point pytree before the program (the sweep engine shards points with it).

    Raises:
        TrainingDivergenceError: a non-finite training loss (names the step and a remedy).
    """
    configs = list(configs)
    check_one_shape(EXPERIMENT, configs)
    place = place or (lambda tree: tree)
    dtype = jax.dtypes.canonicalize_dtype(np.float64)
    root_keys = place(jnp.stack([jax.random.PRNGKey(c.seed) for c in configs]))
    hp = {name: jnp.asarray([getattr(c, name) for c in configs], dtype=dtype) for name in TRACED}
    hp["loss_index"] = jnp.asarray([LOSSES.index(c.loss) for c in configs])
    hp["linear"] = jnp.asarray([float(c.network == "linear") for c in configs], dtype=dtype)
    layer_in, layer_pre, layer_post, weights, classifier_worst, losses = jax.tree_util.tree_map(
        np.asarray, _program(_template(configs[0]), root_keys, place(hp)))
    for index, config in enumerate(configs):
        check_finite(losses[index], record_every=RECORD_EVERY, learning_rate=config.learning_rate,
                     what=f"supervised training (seed {config.seed}, loss {config.loss})", remedy="init_scale")
    contrastive = np.asarray([c.loss in CONTRASTIVE for c in configs])
    diagnostics = common.SupervisedDiagnostics(final_loss=losses[:, -1],
                                               classifier_worst_group=np.where(contrastive, np.nan, classifier_worst),
                                               steps=np.asarray([c.steps for c in configs]))
    times = np.stack([c.learning_rate * RECORD_EVERY * (np.arange(losses.shape[1]) + 1) for c in configs])
    return SupervisedResult(layer_in, layer_pre, layer_post, weights, losses, times, diagnostics)


def predict(config: SupervisedConfig) -> None:
    """No closed form for ReLU networks (the linear theory is simulations.experiments.linear_supervised)."""
    return None


def _summary(point: SupervisedResult, config: SupervisedConfig) -> dict:
    if config.task == "shift":
        return {layer: {"worst_group": float(getattr(point, layer).worst_group),
                        "average": float(getattr(point, layer).average)} for layer in ("pre", "post")}
    return {layer: {"fine": float(getattr(point, layer).fine_r2)} for layer in ("pre", "post")}


def _diagnostics(point: SupervisedResult) -> dict:
    d = point.diagnostics
    worst = float(d.classifier_worst_group)
    return {"final_loss": float(d.final_loss), "steps": int(d.steps),
            "classifier_worst_group": None if np.isnan(worst) else worst}


def report(points, configs) -> dict:
    """``--json``: for the command's three runs {"supcon": {"pre": {"fine"}, "post"}, "cross_entropy": ...,
    "shift": {"pre": {"worst_group", "average"}, "post"}, "diagnostics": {run: {final_loss, steps,
    classifier_worst_group}}}; for one run its own entry and diagnostics."""
    if isinstance(points, SupervisedResult):
        return {**_summary(points, configs), "diagnostics": _diagnostics(points)}
    names = ARMS if len(points) == len(ARMS) else [f"run{i}" for i in range(len(points))]
    out = {name: _summary(point, config) for name, point, config in zip(names, points, configs)}
    return {**out, "diagnostics": {name: _diagnostics(point) for name, point in zip(names, points)}}


def table(points, configs) -> str:
    """Readable table: fine-label R^2 and retrained worst-group / average accuracy per layer."""
    if isinstance(points, SupervisedResult):
        points, configs = [points], [configs]
    names = ARMS if len(points) == len(ARMS) else [f"run{i}" for i in range(len(points))]
    lines = ["run            layer  fine R2  fine acc  worst-group  average  (final loss, steps)"]
    for name, point in zip(names, points):
        for layer in LAYERS:
            r = getattr(point, layer)
            lines.append(f"{name:13s}  {layer:5s}  {r.fine_r2:7.3f}  {r.fine_accuracy:8.3f}  "
                         f"{r.worst_group:11.3f}  {r.average:7.3f}")
        lines[-1] += f"  ({float(point.diagnostics.final_loss):.5g}, {int(point.diagnostics.steps)})"
    return "\n".join(lines)


def _command_fields() -> type:
    """The command's flags: every SupervisedConfig field but task and loss, plus contrastive_form."""
    fields = [(f.name, f.type, dataclasses.field(default=f.default, metadata=f.metadata))
              for f in dataclasses.fields(SupervisedConfig) if f.name not in ("task", "loss")]
    fields.append(("contrastive_form", "str", dataclasses.field(default="spectral",
                                                                 metadata={"choices": CONTRASTIVE})))
    cls = dataclasses.make_dataclass("SupervisedCommandFields", fields, frozen=True, kw_only=True)
    cls.__module__ = __name__
    cls.__doc__ = (SupervisedConfig.__doc__.rstrip() + "\n        contrastive_form: supervised contrastive loss of "
                   "the 'supcon' run: \"spectral\" or \"infonce\" (SupCon).\n")
    return cls


def build(fields: dict, quick: bool) -> list[SupervisedConfig]:
    """The command's three configs (ARMS order) from its flags; every flag applies to all three."""
    fields = dict(fields)
    form = check_choice("contrastive_form", fields.pop("contrastive_form", "spectral"), CONTRASTIVE)
    make = SupervisedConfig.quick if quick else SupervisedConfig
    return [make(task="coarse_to_fine", loss=form, **fields),
            make(task="coarse_to_fine", loss="cross_entropy", **fields),
            make(task="shift", loss="cross_entropy", **fields)]


EXPERIMENT = Experiment(
    name="supervised", config=SupervisedConfig, run_batch=run_batch, result=SupervisedResult, shape_key=shape_key,
    predict=predict, report=report, table=table, doc=__doc__,
    command=Command(config_fields=_command_fields(), build=build))
