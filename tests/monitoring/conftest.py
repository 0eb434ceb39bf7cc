"""Fixtures: a toy model with a monitoring block, published under a local KEK, and its monitor."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from phiserve.config import Settings
from phiserve.crypto import key_provider_from_settings
from phiserve.monitoring import reference_block
from phiserve.registry import ModelRegistry
from phiserve.repository.publish import publish
from phiserve.repository.store import ModelRepository
from phiserve.runtime import runtimes
from tests.toy_models import exported_doubler

FEATURES = ("alpha", "beta", "gamma", "delta")


def scorer_bytes() -> bytes:
    """x FP32 [N, 4] -> score = x * 0.25 (FP32 [N, 4]) and copy = x (a second output)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    score = helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 4])
    copy = helper.make_tensor_value_info("copy", TensorProto.FLOAT, ["N", 4])
    quarter = numpy_helper.from_array(np.array(0.25, dtype=np.float32), "quarter")
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "quarter"], ["score"]),
            helper.make_node("Identity", ["x"], ["copy"]),
        ],
        "scorer",
        [x],
        [score, copy],
        [quarter],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model.SerializeToString()


def reference_rows(n: int = 5000, seed: int = 0) -> np.ndarray:
    """The training population: four features uniform on [0, 4) (so scores are in [0, 1))."""
    return np.random.default_rng(seed).uniform(0, 4, size=(n, 4)).astype(np.float32)


def toy_block(**overrides: Any) -> dict[str, Any]:
    """The monitoring block the toy model's export would carry."""
    x = reference_rows()
    block = reference_block(
        x,
        x * 0.25,
        input_name="x",
        score_output_name="score",
        score_column=0,
        feature_names=FEATURES,
    )
    block.update(overrides)
    return block


@pytest.fixture
def monitored_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Publish the toy scorer (with ``block``) as ``scorer`` v1; returns its settings."""

    def make(block: dict[str, Any] | None = None) -> Settings:
        settings = Settings(home=tmp_path, execution_provider="cpu")
        provider = key_provider_from_settings(settings, create=True)
        exported = dataclasses.replace(
            exported_doubler("scorer"),
            onnx_bytes=scorer_bytes(),
            extensions={"monitoring": toy_block() if block is None else block},
        )
        publish(ModelRepository(settings.repository_dir), exported, provider)
        return settings

    return make


def registry_for(settings: Settings, hooks: tuple) -> ModelRegistry:
    """A registry over ``settings``' repository with ``hooks``."""
    return ModelRegistry(
        ModelRepository(settings.repository_dir),
        lambda: key_provider_from_settings(settings),
        runtimes(settings),
        hooks=hooks,
    )


def monitoring_sample_names() -> set[str]:
    """Every sample name the monitor exposes once a window has rows, decisions and outcomes."""
    from phiserve.monitoring import Monitor, MonitoringBlock
    from phiserve.monitoring.window import Window, WindowSettings

    monitor = Monitor()
    settings = WindowSettings(size=100, min_rows=1, outcome_window=10)
    window = Window(MonitoringBlock.model_validate(toy_block()), settings)
    monitor.windows[("m", 1)] = window
    monitor.health_checks = {"audit trail": lambda: True}
    x = reference_rows(10).astype(np.float64)
    window.add(x, np.zeros(x.shape, bool), x[:, 0] / 4, ["defer"] * 10, list("abcdefghij"), 0.0)
    window.record_outcome("a", 1, 0.0)
    return {s.name for family in monitor.collect() for s in family.samples}
