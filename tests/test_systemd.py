"""systemd units and install.sh: unit contents, dry run, staged (idempotent) install, systemd-analyze verify."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

SYSTEMD = Path(__file__).resolve().parents[1] / "systemd"
INSTALL = SYSTEMD / "install.sh"
UNITS = ("kiosk.target", "kiosk-display.service", "kiosk-worker.service", "kiosk-web.service",
         "kiosk-backup.service", "kiosk-backup.timer")
SERVICES = {"kiosk-display.service": "display", "kiosk-worker.service": "worker", "kiosk-web.service": "web"}
PLACEHOLDERS = {"@PREFIX@", "@USER@", "@DATA@", "@CONFIG@"}


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Sections -> (key, value) pairs in order; systemd allows repeated keys, so no configparser."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"key outside a section: {raw!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {raw!r}"
        current.append((key.strip(), value.strip()))
    return sections


def one(sec: list[tuple[str, str]], key: str) -> str:
    values = [v for k, v in sec if k == key]
    assert len(values) == 1, f"{key}: {values}"
    return values[0]


def every(sec: list[tuple[str, str]], key: str) -> list[str]:
    return [v for k, v in sec if k == key]


def seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+)\s*(s|min)?", value)
    assert m, value
    return int(m.group(1)) * (60 if m.group(2) == "min" else 1)


def run_install(*args: str, user: str | None = None) -> subprocess.CompletedProcess:
    cmd = ["bash", str(INSTALL), *args]
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd="/")


@pytest.fixture
def layout(tmp_path):
    prefix = tmp_path / "opt" / "kiosk"
    (prefix / ".venv" / "bin").mkdir(parents=True)
    (prefix / ".venv" / "bin" / "python").symlink_to(sys.executable)
    return {"prefix": prefix, "data": tmp_path / "var" / "lib" / "kiosk", "root": tmp_path / "stage"}


def _stage(layout, *extra: str) -> subprocess.CompletedProcess:
    proc = run_install("--root", str(layout["root"]), "--prefix", str(layout["prefix"]), "--data",
                       str(layout["data"]), "--user", "kiosk", *extra)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_unit_templates_have_required_keys():
    parsed = {u: parse_unit((SYSTEMD / u).read_text()) for u in UNITS}
    for name, text in ((u, (SYSTEMD / u).read_text()) for u in UNITS):
        assert set(re.findall(r"@[A-Z]+@", text)) <= PLACEHOLDERS, name
    target = parsed["kiosk.target"]
    assert set(one(target["Unit"], "Wants").split()) == set(SERVICES)
    assert one(target["Install"], "WantedBy") == "graphical.target"
    assert one(target["Unit"], "DefaultDependencies") == "no"  # else ordering cycle with graphical.target
    for unit, command in SERVICES.items():
        svc = parsed[unit]
        assert one(svc["Unit"], "PartOf") == "kiosk.target"
        assert one(svc["Install"], "WantedBy") == "kiosk.target"
        assert one(svc["Service"], "User") == "@USER@"
        assert one(svc["Service"], "Restart") == "always"
        assert seconds(one(svc["Service"], "RestartSec")) >= 1
        assert one(svc["Service"], "ExecStart") == f"@PREFIX@/.venv/bin/python -m kiosk {command} --config @CONFIG@"
        assert one(svc["Service"], "KillSignal") == "SIGTERM"
    for unit in SERVICES:  # watchdog, start limits and stop timeouts on every long-running service
        svc, head = parsed[unit]["Service"], parsed[unit]["Unit"]
        assert one(svc, "Type") == "notify" and one(svc, "NotifyAccess") == "main"
        assert 10 <= seconds(one(svc, "WatchdogSec")) <= 600
        assert seconds(one(svc, "TimeoutStopSec")) >= 10 and seconds(one(svc, "TimeoutStartSec")) >= 30
        assert seconds(one(head, "StartLimitIntervalSec")) >= 300 and int(one(head, "StartLimitBurst")) >= 10
    worker = parsed["kiosk-worker.service"]["Service"]
    assert seconds(one(worker, "TimeoutStopSec")) >= 60  # room to checkpoint on SIGTERM
    assert seconds(one(worker, "TimeoutStartSec")) >= 600  # the first load of big checkpoints
    backup = parsed["kiosk-backup.service"]["Service"]
    assert one(backup, "Type") == "oneshot" and " -m kiosk backup --config @CONFIG@" in one(backup, "ExecStart")
    timer = parsed["kiosk-backup.timer"]
    assert one(timer["Timer"], "Persistent") == "true" and one(timer["Install"], "WantedBy") == "timers.target"
    assert one(parsed["kiosk-display.service"]["Service"], "RestartPreventExitStatus") == "4"  # a staff quit
    display = parsed["kiosk-display.service"]
    assert "graphical.target" in one(display["Unit"], "After").split()
    envs = every(display["Service"], "Environment")
    assert "SDL_VIDEODRIVER=x11" in envs and "DISPLAY=:0" in envs
    assert one(display["Service"], "EnvironmentFile") == "-/etc/kiosk/display.env"


def test_dry_run_prints_substituted_units_and_changes_nothing(layout):
    user = "root" if os.geteuid() == 0 else os.environ.get("USER", "nobody")
    proc = run_install("--dry-run", "--prefix", str(layout["prefix"]), "--data", str(layout["data"]),
                       "--user", user, "--video", "kms")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "dry run: nothing was changed" in out
    assert "would run: install -d -m 0750" in out and str(layout["data"]) in out
    for unit in UNITS:
        assert f"/etc/systemd/system/{unit}" in out
    assert f"| ExecStart={layout['prefix']}/.venv/bin/python -m kiosk worker --config {layout['data']}/kiosk.toml" in out
    assert f"| User={user}" in out and "| SDL_VIDEODRIVER=kmsdrm" in out
    assert "would run: systemctl enable kiosk.target kiosk-display.service" in out
    assert not re.search(r"@[A-Z]+@", out)
    assert not layout["data"].exists()


def test_staged_install_is_complete_and_idempotent(layout):
    root = layout["root"]
    proc = _stage(layout, "--video", "wayland")
    unit_dir = root / "etc" / "systemd" / "system"
    for unit in UNITS:
        text = (unit_dir / unit).read_text()
        assert not re.search(r"@[A-Z]+@", text), unit
    for unit, command in SERVICES.items():
        svc = parse_unit((unit_dir / unit).read_text())["Service"]
        exe, *args = one(svc, "ExecStart").split()
        assert Path(exe).is_file() and os.access(exe, os.X_OK)
        assert args == ["-m", "kiosk", command, "--config", f"{layout['data']}/kiosk.toml"]
        assert one(svc, "WorkingDirectory") == str(layout["data"])
    assert (root / str(layout["data"]).lstrip("/")).is_dir()
    env = (root / "etc" / "kiosk" / "display.env").read_text()
    assert "SDL_VIDEODRIVER=wayland" in env and "XDG_RUNTIME_DIR=/run/user/" in env
    if shutil.which("systemctl"):
        assert (unit_dir / "graphical.target.wants" / "kiosk.target").is_symlink()
        for unit in SERVICES:
            assert (unit_dir / "kiosk.target.wants" / unit).is_symlink()
        assert (unit_dir / "timers.target.wants" / "kiosk-backup.timer").is_symlink()
    assert proc.stdout.count("wrote ") == len(UNITS) + 2  # units, display.env, kiosk.toml

    mtimes = {p: p.stat().st_mtime_ns for p in unit_dir.glob("*.*")}
    again = _stage(layout, "--video", "wayland")
    assert "wrote " not in again.stdout and again.stdout.count("unchanged ") == len(UNITS) + 1
    assert {p: p.stat().st_mtime_ns for p in unit_dir.glob("*.*")} == mtimes
    third = _stage(layout, "--video", "x11")  # only the display environment changes
    assert third.stdout.count("wrote ") == 1 and "display.env" in third.stdout


def _verify(unit_dir: Path) -> subprocess.CompletedProcess:
    files = [str(unit_dir / u) for u in UNITS]
    graphical = Path("/lib/systemd/system/graphical.target")
    if graphical.exists():
        files.append(str(graphical))  # with the .wants symlinks: the enabled boot transaction
    return subprocess.run(["systemd-analyze", "verify", "--man=no", *files], capture_output=True, text=True,
                          timeout=30)


@pytest.mark.skipif(not shutil.which("systemd-analyze") or not shutil.which("systemctl"),
                    reason="systemd-analyze/systemctl not installed on this machine")
def test_systemd_analyze_verify_enabled_units(layout):
    _stage(layout)
    unit_dir = layout["root"] / "etc" / "systemd" / "system"
    proc = _verify(unit_dir)
    assert proc.returncode == 0 and proc.stdout + proc.stderr == "", proc.stdout + proc.stderr
    # control: without DefaultDependencies=no the enabled target forms an ordering cycle, and verify says so
    target = unit_dir / "kiosk.target"
    target.write_text(target.read_text().replace("DefaultDependencies=no", ""))
    bad = _verify(unit_dir)
    assert "ordering cycle" in bad.stdout + bad.stderr


@pytest.mark.skipif(not shutil.which("setpriv"), reason="setpriv not available")
def test_refuses_without_root(layout, tmp_path):
    user = "65534" if os.geteuid() == 0 else None  # drop to nobody when the tests run as root
    proc = run_install("--prefix", str(layout["prefix"]), "--data", str(layout["data"]), user=user)
    assert proc.returncode != 0
    assert "must run as root" in proc.stderr and "--dry-run" in proc.stderr
    assert not layout["data"].exists()


@pytest.mark.parametrize("args, message", [
    (["--video", "vga"], "--video must be x11, wayland or kms"),
    (["--prefix", "opt/kiosk"], "--prefix must be an absolute path"),
    (["--data", "/var/lib/my kiosk"], "--data must be an absolute path"),
    (["--user", "Bad User"], "--user must be a plain account name"),
    (["--prefix"], "option --prefix needs a value"),
    (["--frobnicate"], "unknown option '--frobnicate'"),
])
def test_bad_arguments(args, message):
    proc = run_install("--dry-run", *args)
    assert proc.returncode != 0 and message in proc.stderr


def test_install_writes_a_loadable_show_config_once(tmp_path):
    import subprocess

    from exhibits.show import load_show

    root = tmp_path / "stage"
    cmd = ["bash", str(SYSTEMD / "install.sh"), "--root", str(root), "--prefix", "/opt/kiosk",
           "--data", "/var/lib/kiosk", "--user", "root", "--no-enable"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    conf = root / "var/lib/kiosk/kiosk.toml"
    cfg = load_show(conf)
    assert str(cfg.data_dir) == "/var/lib/kiosk" and cfg.exhibits == ("demo",)
    conf.write_text('[show]\nexhibits = ["doorways"]\n')
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    assert "left as it is" in out and load_show(conf).exhibits == ("doorways",)
