"""Shared fixtures: zoo models built once per session, and spec files written for them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
import zoo

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "example_project"


@pytest.fixture(scope="session")
def zoo_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("zoo")


@pytest.fixture(scope="session")
def zoo_models(zoo_dir) -> dict[str, zoo.ZooModel]:
    return zoo.build_all(zoo_dir)


def write_spec(path: Path, models: list[dict], **top) -> Path:
    """Write a spec file; ``models`` entries use the contract's keys (paths may be absolute)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"quantacc": 1, **top, "models": models}, sort_keys=False))
    return path


def zoo_entry(name: str, zm: zoo.ZooModel, **extra) -> dict:
    entry = {"name": name, "model": str(zm.model), "calibration": {"data": str(zm.calib)},
             "evaluation": {"data": str(zm.eval)}}
    entry.update(extra)
    return entry
