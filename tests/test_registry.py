"""Pipelines registered like methods: which one a configuration runs through, with which tree."""

from __future__ import annotations

import pytest
import torch

from mhkd import api, models, pipelines
from mhkd import config as cfg
from mhkd.config import RunConfig
from mhkd.pipelines.proxy import ProxyRunConfig
from mhkd.pipelines.prune import PruneRunConfig
from mhkd.pipelines.registry import select

from test_export import error_line


def test_a_tree_is_built_as_the_configuration_of_the_pipeline_whose_section_it_holds():
    plain = pipelines.build_config(cfg.from_keywords(method="kd"))
    proxy = pipelines.build_config(cfg.from_keywords(method="infoflow", aux="auto"))
    pruning = pipelines.build_config({"prune": {"keep": 0.3}})
    assert type(plain) is RunConfig and select(plain) is None
    assert isinstance(proxy, ProxyRunConfig) and select(proxy).name == "proxy"
    assert isinstance(pruning, PruneRunConfig) and select(pruning).name == "prune"
    assert not hasattr(pruning, "method") and pruning.prune.keep == 0.3
    assert select(pipelines.build_config(cfg.from_keywords(method="ab"))).name == "pretrain"
    assert {"proxy", "pretrain", "prune"} <= {p.name for p in pipelines.registered()}


def test_a_configuration_two_pipelines_take_is_refused():
    config = pipelines.build_config(cfg.from_keywords(method="ab+infoflow", aux="auto"))
    with pytest.raises(cfg.ConfigError, match="asks for .*proxy.* and .*pretrain|pretrain and"):
        select(config)


def test_the_pipelines_section_settings_are_refused_without_it():
    with pytest.raises(cfg.ConfigError, match="--aux-width does nothing in this run"):
        pipelines.build_config(cfg.from_keywords(method="kd", aux_width=3.0))
    with pytest.raises(cfg.ConfigError, match="unknown key"):
        cfg.build(cfg.from_keywords(method="infoflow", aux="auto"))  # not a plain run's


def test_api_run_hands_a_pruning_configuration_to_the_pruning_pipeline(tiny_data, fast, tmp_path):
    torch.manual_seed(0)
    model = models.create("resnet8", num_classes=4, width_mult=0.25)
    tree = cfg.from_keywords(**fast, epochs=1)
    tree["prune"] = {"keep": 0.5, "assistants": 1, "finetune_epochs": 1, "latency_repeats": 1}
    summary = api.run(pipelines.build_config(tree), tmp_path / "run", student=model,
                      splits=tiny_data)  # fmt: skip
    assert summary["keeps"] == [0.5, 1.0] and summary["params_after"] < summary["params_before"]
    assert (tmp_path / "run" / "stage1" / "student.pt").is_file()
    with pytest.raises(ValueError, match="pruning takes no teacher"):
        api.run(pipelines.build_config(tree), tmp_path / "other", student=model,
                teacher=model, splits=tiny_data)  # fmt: skip


def test_the_recipe_command_points_a_pruning_recipe_to_mhkd_prune(capsys):
    recipe = "recipes/prune/digits_resnet56_keep0.4_cascade.yaml"
    line = error_line(capsys, ["recipe", recipe])
    assert f"is a pruning recipe: mhkd prune --recipe {recipe}" in line
