"""Weights registry and resumable, verified downloads against a real local HTTP server."""
from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from renderer import weights
from renderer.base import GeneratorUnavailable
from tests.weights_helpers import LocalServer, ServerState, write_registry

pytestmark = pytest.mark.timeout(60)

PAYLOAD = os.urandom(300_000)
YAML = b"model:\n  params:\n    embed_dim: 4\n"
SHA = hashlib.sha256(PAYLOAD).hexdigest()
FAST = dict(progress=False, timeout=5.0, backoff=0.0)


@pytest.fixture
def state() -> ServerState:
    return ServerState(files={"model.ckpt": PAYLOAD, "model.yaml": YAML})


@pytest.fixture
def server(state: ServerState):
    with LocalServer(state) as srv:
        yield srv


def _entry(server: LocalServer, **over) -> dict:
    e = dict(name="tiny", family="vqgan", url=f"{server.base_url}/model.ckpt", filename="tiny.ckpt",
             size=len(PAYLOAD), sha256=SHA, description="test checkpoint")
    e.update(over)
    return e


def _registry(tmp_path: Path, server: LocalServer, **over) -> Path:
    return write_registry(tmp_path / "reg" / "checkpoints.toml", [_entry(server, **over)])


def test_full_fetch_verifies_and_installs(tmp_path, server, state):
    reg = _registry(tmp_path, server, extra=[{"url": f"{server.base_url}/model.yaml", "filename": "tiny.yaml",
                                             "size": len(YAML), "sha256": hashlib.sha256(YAML).hexdigest()}])
    wdir = tmp_path / "w"
    assert weights.status(wdir, reg) == [{"name": "tiny", "state": "missing", "family": "vqgan",
                                          "description": "test checkpoint", "path": wdir / "tiny.ckpt",
                                          "present_bytes": 0, "total_bytes": len(PAYLOAD) + len(YAML)}]
    path = weights.fetch("tiny", wdir, sources=reg, **FAST)
    assert path == wdir / "tiny.ckpt"
    assert path.read_bytes() == PAYLOAD
    assert (wdir / "tiny.yaml").read_bytes() == YAML
    assert not list(wdir.glob("*.part"))
    assert weights.resolve("tiny", wdir, reg) == path
    (st,) = weights.status(wdir, reg)
    assert st["state"] == "installed" and st["present_bytes"] == st["total_bytes"] == len(PAYLOAD) + len(YAML)
    # a second fetch is a no-op: nothing is requested again
    state.reset_counters()
    weights.fetch("tiny", wdir, sources=reg, **FAST)
    assert state.requests == []


def test_interrupted_fetch_resumes_from_part(tmp_path, server, state):
    reg = _registry(tmp_path, server)
    wdir = tmp_path / "w"
    half = 120_000
    state.drop_after, state.drops_left = half, 1
    with pytest.raises(weights.WeightsError, match="resume"):
        weights.fetch("tiny", wdir, sources=reg, retries=0, **FAST)
    part = wdir / "tiny.ckpt.part"
    assert part.stat().st_size == half
    assert not (wdir / "tiny.ckpt").exists()
    (st,) = weights.status(wdir, reg)
    assert st["state"] == "partial" and st["present_bytes"] == half
    with pytest.raises(GeneratorUnavailable, match="fetch-models tiny"):
        weights.resolve("tiny", wdir, reg)

    state.reset_counters()
    path = weights.fetch("tiny", wdir, sources=reg, **FAST)
    assert path.read_bytes() == PAYLOAD
    assert state.requests == [("/model.ckpt", f"bytes={half}-")]
    assert state.bytes_served == len(PAYLOAD) - half  # only the rest was transferred


def test_retry_within_one_call_resumes(tmp_path, server, state):
    reg = _registry(tmp_path, server)
    state.drop_after, state.drops_left = 50_000, 2
    path = weights.fetch("tiny", tmp_path / "w", sources=reg, retries=3, **FAST)
    assert path.read_bytes() == PAYLOAD
    assert [r for _, r in state.requests] == [None, "bytes=50000-", "bytes=100000-"]
    assert state.bytes_served == len(PAYLOAD)  # nothing was sent twice


def test_server_ignoring_range_restarts_cleanly(tmp_path, server, state):
    reg = _registry(tmp_path, server)
    wdir = tmp_path / "w"
    wdir.mkdir()
    # a stale .part whose bytes differ from the real file: splicing it would corrupt the result
    (wdir / "tiny.ckpt.part").write_bytes(b"\0" * 100_000)
    state.honour_range = False
    path = weights.fetch("tiny", wdir, sources=reg, **FAST)
    assert path.read_bytes() == PAYLOAD
    assert state.requests == [("/model.ckpt", "bytes=100000-")]
    assert state.bytes_served == len(PAYLOAD)


def test_wrong_sha256_leaves_no_file(tmp_path, server):
    reg = _registry(tmp_path, server, sha256="0" * 64)
    wdir = tmp_path / "w"
    with pytest.raises(weights.ChecksumMismatch, match=f"expected {'0' * 64}, got {SHA}"):
        weights.fetch("tiny", wdir, sources=reg, **FAST)
    assert not (wdir / "tiny.ckpt").exists()
    assert not (wdir / "tiny.ckpt.part").exists()


def test_wrong_size_leaves_no_file(tmp_path, server, state):
    state.files["short.bin"] = PAYLOAD[:1000]
    reg = _registry(tmp_path, server, url=f"{server.base_url}/short.bin", size=2000, sha256="")
    wdir = tmp_path / "w"
    with pytest.raises(weights.WeightsError):
        weights.fetch("tiny", wdir, sources=reg, retries=1, **FAST)
    assert not (wdir / "tiny.ckpt").exists()


def test_unknown_sha_is_pinned_on_first_download(tmp_path, server, caplog):
    reg = _registry(tmp_path, server, sha256="", size=0)
    wdir = tmp_path / "w"
    with caplog.at_level(logging.WARNING, logger="renderer.weights"):
        weights.fetch("tiny", wdir, sources=reg, **FAST)
    assert "pinned on first download" in caplog.text
    assert (wdir / "tiny.ckpt.sha256").read_text().split() == [SHA, "tiny.ckpt"]


def test_pinned_sha_is_enforced_on_redownload(tmp_path, server, state):
    reg = _registry(tmp_path, server, sha256="", size=0)
    wdir = tmp_path / "w"
    weights.fetch("tiny", wdir, sources=reg, **FAST)
    (wdir / "tiny.ckpt").unlink()
    state.files["model.ckpt"] = PAYLOAD[::-1]  # upstream file changed under the same URL
    with pytest.raises(weights.ChecksumMismatch):
        weights.fetch("tiny", wdir, sources=reg, **FAST)
    assert not (wdir / "tiny.ckpt").exists()


def test_http_404_is_a_clear_error(tmp_path, server):
    reg = _registry(tmp_path, server, url=f"{server.base_url}/nope.ckpt")
    with pytest.raises(weights.WeightsError, match="HTTP 404.*nope.ckpt"):
        weights.fetch("tiny", tmp_path / "w", sources=reg, **FAST)


def test_unreachable_server_gives_up_after_bounded_retries(tmp_path, server):
    reg = _registry(tmp_path, server, url="http://127.0.0.1:9/x.ckpt")
    with pytest.raises(weights.WeightsError, match="after 3 attempt"):
        weights.fetch("tiny", tmp_path / "w", sources=reg, retries=2, **FAST)


def test_progress_callback_reports_bytes(tmp_path, server):
    reg = _registry(tmp_path, server)
    seen: list[tuple[int, int]] = []
    weights.fetch("tiny", tmp_path / "w", lambda d, t: seen.append((d, t)), sources=reg, timeout=5.0)
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))


def test_resolve_unknown_and_missing(tmp_path, server):
    reg = _registry(tmp_path, server)
    with pytest.raises(weights.WeightsError, match="unknown checkpoint 'nope'.*known checkpoints: tiny"):
        weights.resolve("nope", tmp_path, reg)
    with pytest.raises(weights.WeightsMissing, match="python -m kiosk fetch-models tiny"):
        weights.resolve("tiny", tmp_path, reg)


def test_list_checkpoints_searches_folders_and_files(tmp_path, server):
    a = write_registry(tmp_path / "r" / "a" / "checkpoints.toml", [_entry(server, name="a1", filename="a1.ckpt")])
    write_registry(tmp_path / "r" / "b" / "deep" / "checkpoints.toml", [_entry(server, name="b1", filename="b1.ckpt")])
    assert [c.name for c in weights.list_checkpoints(tmp_path / "r")] == ["a1", "b1"]
    only = weights.list_checkpoints([a])
    assert [c.name for c in only] == ["a1"] and only[0].source == a and only[0].size == len(PAYLOAD)


@pytest.mark.parametrize(
    "over, message",
    [
        ({"size": -1}, "'size' must be an integer"),
        ({"size": "12"}, "'size' must be an integer"),
        ({"sha256": "abc"}, "'sha256' must be 64 hex"),
        ({"url": "ftp://x/y"}, "'url' must be an http"),
        ({"filename": "../evil.ckpt"}, "'filename' must be a plain file name"),
        ({"colour": "red"}, "unknown keys \\['colour'\\]"),
        ({"extra": [{"url": "http://x/y.yaml"}]}, "extra\\[0\\]: missing key 'filename'"),
    ],
)
def test_registry_validation_names_file_and_key(tmp_path, server, over, message):
    reg = _registry(tmp_path, server, **over)
    with pytest.raises(weights.WeightsError, match=message) as info:
        weights.list_checkpoints(reg)
    assert str(reg) in str(info.value)


def test_registry_missing_key_and_duplicates(tmp_path, server):
    e = _entry(server)
    del e["sha256"]
    reg = write_registry(tmp_path / "x" / "checkpoints.toml", [e])
    with pytest.raises(weights.WeightsError, match=r"missing keys \['sha256'\]"):
        weights.list_checkpoints(reg)
    r1 = write_registry(tmp_path / "d1" / "checkpoints.toml", [_entry(server)])
    r2 = write_registry(tmp_path / "d2" / "checkpoints.toml", [_entry(server, filename="other.ckpt")])
    with pytest.raises(weights.WeightsError, match="declared twice"):
        weights.list_checkpoints([r1, r2])
    bad = tmp_path / "bad" / "checkpoints.toml"
    bad.parent.mkdir()
    bad.write_text("[[checkpoint]\nname=", encoding="utf-8")
    with pytest.raises(weights.WeightsError, match="invalid TOML"):
        weights.list_checkpoints(bad)


def test_shipped_registries_are_valid():
    # whatever checkpoints.toml files exist under renderer/ must parse
    for ckpt in weights.list_checkpoints():
        assert ckpt.url.startswith("https://"), ckpt


def test_module_does_not_import_torch():
    code = "import sys, renderer.weights; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
