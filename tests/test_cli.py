"""The command line as a newcomer meets it: help, listing, checking, and clear refusals."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def kiosk(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "kiosk", *args], cwd=cwd or ROOT, capture_output=True, text=True,
                          timeout=120)


def test_help_lists_every_command():
    r = kiosk("--help")
    assert r.returncode == 0
    for cmd in ("demo", "display", "worker", "web", "render", "exhibits", "status", "models", "fetch-models", "export"):
        assert cmd in r.stdout
    assert "python -m kiosk demo --windowed" in r.stdout


def test_unknown_command_is_refused():
    r = kiosk("paint")
    assert r.returncode == 2 and "invalid choice: 'paint'" in r.stderr


def test_unknown_exhibit_is_refused_before_anything_starts(tmp_path):
    r = kiosk("status", "--data", str(tmp_path / "d"), "--exhibits", "heaven")
    assert r.returncode == 2
    assert "unknown exhibit 'heaven'" in r.stderr and "doorways" in r.stderr
    assert not (tmp_path / "d").exists(), "a refused command created the archive"


def test_exhibits_lists_and_checks(tmp_path):
    r = kiosk("exhibits")
    assert r.returncode == 0 and "doorways" in r.stdout and "33 realm sets" in r.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('title = "x"\n[generator]\nname = "default"\n[canvas]\nwidth = "big"\n')
    good = ROOT / "exhibits" / "doorways.toml"
    r = kiosk("exhibits", "--check", str(good), str(bad))
    assert r.returncode == 1
    assert f"ok: {good}" in r.stdout
    assert str(bad) in r.stderr and "'canvas.width'" in r.stderr and "whole number" in r.stderr


def test_fetch_of_an_unknown_model_names_the_known_ones(tmp_path):
    r = kiosk("fetch-models", "stylegan9", "--data", str(tmp_path))
    assert r.returncode == 1 and "unknown checkpoint 'stylegan9'" in r.stderr and "stylegan1-ffhq-1024" in r.stderr
    assert "Traceback" not in r.stderr


def test_status_of_a_fresh_archive(tmp_path):
    r = kiosk("status", "--data", str(tmp_path))
    assert r.returncode == 0 and "pieces: 0" in r.stdout and "workers alive: 0" in r.stdout
