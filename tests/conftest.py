"""Shared fixtures: a real store in a temporary directory, and a test exhibit directory."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Nothing in the tests may write into the user's real archive or open a real screen.
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")


@pytest.fixture(autouse=True)
def _isolated_data(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("KIOSK_DATA", str(tmp_path_factory.mktemp("kiosk-data")))


@pytest.fixture
def store(tmp_path):
    from exhibits.store import Store

    s = Store(tmp_path / "store")
    yield s
    s.close()


STEPWISE_TOML = """
title = "Stepwise test"
series = "Test series"
[canvas]
width = 32
height = 32
[generator]
name = "stepwise"
instant = {instant}
steps = {steps}
step_seconds = {step_seconds}
"""


@pytest.fixture
def stepwise_dir(tmp_path):
    """An exhibit directory with a slow iterative exhibit (tests.plugins.stepwise)."""
    d = tmp_path / "exhibits"
    d.mkdir()
    (d / "stepwise.toml").write_text(STEPWISE_TOML.format(instant="false", steps=40, step_seconds=0.1))
    (d / "quick.toml").write_text(STEPWISE_TOML.format(instant="true", steps=2, step_seconds=0.0))
    return d
