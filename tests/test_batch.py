"""Merch batches: a Doorways batch walks the exhibit's realm sets (all, or a chosen subset) and renders."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from exhibits.show import ShowConfig
from exhibits.store import Store
from renderer import cpu_memory
from kiosk.batch import choose_sets, plan_batch

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[1]
HEAVEN_HELL = [["Entrance to the Heaven realm by James Gurney", 1.0], ["Entrance to the Hell realm by James Gurney", 1.0]]


def _jobs(store: Store, batch: str):
    jobs = [j for j in store.jobs(source="batch", limit=1000) if j.params.get("batch") == batch]
    return sorted(jobs, key=lambda j: j.params["batch_index"])


def test_doorways_batch_walks_every_realm_set(tmp_path):
    cfg = ShowConfig(data_dir=tmp_path)
    store = Store(tmp_path)
    added = plan_batch(store, cfg, "doorways-tiny", count=None, seed=5, batch="zine")
    jobs = _jobs(store, "zine")
    assert added == len(jobs) == 4  # one per pair of doorways_tiny.toml
    assert [j.prompt_text for j in jobs] == ["Heaven / Hell", "Limbo / Purgatory", "Sun / Moon",
                                             "Forest / Kelp Forest"]
    assert [list(map(list, j.prompts)) for j in jobs][0] == HEAVEN_HELL
    for job in jobs:
        assert job.prompts and all(w != 0 for _, w in job.prompts)  # the worker refused empty prompts
    assert [j.seed for j in jobs] == [5, 6, 7, 8]
    # a longer batch goes round the sets again; a rerun plans nothing new
    plan_batch(store, cfg, "doorways-tiny", count=6, seed=5, batch="six")
    assert [j.prompt_text for j in _jobs(store, "six")][4:] == ["Heaven / Hell", "Limbo / Purgatory"]
    assert plan_batch(store, cfg, "doorways-tiny", count=6, seed=5, batch="six") == 0


def test_batch_subset_by_group_pair_or_realm(tmp_path):
    from exhibits.config import load_exhibits

    ex = load_exhibits(["doorways-tiny"])["doorways-tiny"]
    assert choose_sets(ex, ["Nature"]) == [("Sun", "Moon"), ("Forest", "Kelp Forest")]
    assert choose_sets(ex, ["heaven/hell", "Moon"]) == [("Heaven", "Hell"), ("Sun", "Moon")]
    assert choose_sets(ex, ["Forest | Kelp Forest", "Nature"]) == [("Forest", "Kelp Forest"), ("Sun", "Moon")]
    with pytest.raises(ValueError, match="'Atlantis' names no group, set or realm of exhibit doorways-tiny; "
                                         "groups: Afterlife, Nature"):
        choose_sets(ex, ["Atlantis"])
    store = Store(tmp_path)
    with pytest.raises(ValueError, match="--sets and --prompt cannot be used together"):
        plan_batch(store, ShowConfig(data_dir=tmp_path), "doorways-tiny", count=None, seed=0, batch="x",
                   prompt="Fire | Ice", sets=["Nature"])
    with pytest.raises(ValueError, match="exhibit demo has no realm sets"):
        plan_batch(store, ShowConfig(data_dir=tmp_path), "demo", count=None, seed=0, batch="y", sets=["Nature"])
    assert store.jobs(limit=10) == []


def test_render_command_makes_a_doorways_piece(tmp_path):
    """``kiosk render doorways-tiny --count 1`` ends with a piece (it used to fail every job)."""
    toml = (ROOT / "exhibits" / "doorways_tiny.toml").read_text()
    toml = toml.replace("steps = 60", "steps = 3").replace("checkpoint_every = 20", "checkpoint_every = 2")
    exdir = tmp_path / "exhibits"
    exdir.mkdir()
    (exdir / "doorways_tiny.toml").write_text(toml)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "kiosk", "render", "doorways-tiny", "--count", "1", "--sets",
                           "Sun/Moon", "--data", str(tmp_path / "data"), "--exhibit-dir", str(exdir),
                           "--device", "cpu"], env=env, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stderr[-2000:]
    if cpu_memory.available():  # a batch on the CPU keeps freed memory for its next step, as the worker does
        assert "freed memory is kept for the next step" in proc.stderr, proc.stderr[-2000:]
    store = Store(tmp_path / "data")
    (piece,) = store.recent_pieces(10)
    assert piece.prompt_text == "Sun / Moon"
    assert [t for t, _ in piece.prompts] == ["Entrance to the Sun realm by James Gurney",
                                             "Entrance to the Moon realm by James Gurney"]
    assert store.path(piece.image_path).stat().st_size > 0
