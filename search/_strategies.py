"""Samplers and pruners by name, built from a validated StudySpec."""

from __future__ import annotations

import optuna

from search._space import grid_space
from search._spec import StudySpec


def make_sampler(spec: StudySpec, *, worker_index: int = 0) -> optuna.samplers.BaseSampler:
    """Each worker gets seed + worker_index, so workers started together do not sample alike."""
    opts = dict(spec.sampler_options)
    seed = opts.pop("seed", spec.seed)
    seed = None if seed is None else int(seed) + worker_index
    name = spec.sampler
    if name == "tpe":
        # multivariate + group handle conditional knobs jointly; constant_liar keeps parallel
        # workers from sampling on top of each other's running trials.
        opts = {"multivariate": True, "group": True, "constant_liar": True, **opts}
        return optuna.samplers.TPESampler(seed=seed, **opts)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler(grid_space(spec), seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, **opts)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, **opts)
    if name == "gp":
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            raise RuntimeError(
                "sampler 'gp' needs PyTorch, which is not installed by default; "
                "run `make venv EXTRAS=dev,gp` or choose sampler tpe"
            )
        return optuna.samplers.GPSampler(seed=seed, **opts)
    raise ValueError(f"unknown sampler {name!r}")


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    opts = dict(spec.pruner_options)
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(**{"min_resource": 1, "max_resource": spec.max_epochs,
                                                 "reduction_factor": 3, **opts})
    if spec.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(**{"min_resource": 1, "reduction_factor": 3, **opts})
    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(**{"n_startup_trials": 5, "n_warmup_steps": 1, **opts})
    if spec.pruner == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner {spec.pruner!r}")
