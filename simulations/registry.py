"""The registry: every experiment the command line and the sweep engine know, by name.

Each experiment module defines one :class:`simulations.experiment.Experiment` named ``EXPERIMENT``;
this is the one place that lists them.
"""

from __future__ import annotations

from simulations.experiment import Experiment, validate
from simulations.experiments import downstream, nonlinear, pixels, readout, reweighting, supervised, weighting

#: name -> experiment (an Experiment, or a module still on the legacy add_arguments/main interface).
EXPERIMENTS: dict[str, object] = {
    "weighting": weighting.EXPERIMENT, "downstream": downstream.EXPERIMENT, "nonlinear": nonlinear.EXPERIMENT,
    "supervised": supervised.EXPERIMENT, "reweighting": reweighting.EXPERIMENT, "readout": readout.EXPERIMENT,
    "pixels": pixels.EXPERIMENT,
}
for _name, _entry in EXPERIMENTS.items():
    if isinstance(_entry, Experiment):
        validate(_entry)
