"""Runs and pipelines of runs, all assembled by :mod:`mhkd.pipelines.builder`.

A pipeline is a sequence of runs (each an ordinary run directory, resumable on its own),
registered in :mod:`mhkd.pipelines.registry` like a method: information flow's proxy teacher,
the pre-training stages of AB/FSP/FT, pruning's two stages. Quantization-aware fine-tuning and
the quickstart are runs of the builder behind their own commands.
"""

from mhkd.pipelines import pretrain, proxy, prune  # noqa: F401  (they register themselves)
from mhkd.pipelines.registry import build_config, read_recipe, registered, run

__all__ = ["build_config", "read_recipe", "registered", "run"]
