"""Module fixtures: one tiny model, one policy and one export (ONNX + TorchScript) per module."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from polar_rl.config import EnvConfig
from polar_rl.models.adapter import LayerModel
from tests.serving.helpers import env_config, tiny_lm, tiny_policy


@pytest.fixture(scope="module")
def lm() -> LayerModel:
    return tiny_lm()


@pytest.fixture(scope="module")
def cfg() -> EnvConfig:
    return env_config()


@pytest.fixture(scope="module")
def policy(lm: LayerModel, cfg: EnvConfig) -> Any:
    return tiny_policy(lm, cfg)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory, lm: LayerModel, cfg: EnvConfig, policy: Any) -> Path:
    from polar_rl.agents.export import export_policy

    out = tmp_path_factory.mktemp("export") / "export"
    return export_policy(policy, lm, cfg, out, ("onnx", "torchscript"), source={"run_dir": "tiny"})
