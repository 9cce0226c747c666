"""The registry: every experiment the command line and the sweep engine know, by name.

Each experiment module defines one :class:`simulations.experiment.Experiment` named ``EXPERIMENT``;
this is the one place that lists them.
"""

from __future__ import annotations

from simulations.experiment import Experiment, validate
from simulations.experiments import downstream, nonlinear, pixels, readout, reweighting, supervised, weighting

#: name -> experiment, in the order the command line lists them.
EXPERIMENTS: dict[str, Experiment] = {
    "weighting": weighting.EXPERIMENT, "downstream": downstream.EXPERIMENT, "nonlinear": nonlinear.EXPERIMENT,
    "supervised": supervised.EXPERIMENT, "reweighting": reweighting.EXPERIMENT, "readout": readout.EXPERIMENT,
    "pixels": pixels.EXPERIMENT,
}
for _experiment in EXPERIMENTS.values():
    validate(_experiment)
