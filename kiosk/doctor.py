"""``python -m kiosk doctor``: what a technician checks before leaving the kiosk for a week, and what to fix.

Each check gives one line, ``ok``, ``warn`` or ``FAIL``, and for anything not ok a ``fix:`` line. The store is
checked with ``PRAGMA integrity_check`` (the whole file, not the quick check the processes run at start), the
archive's identity, rows whose image is gone and images without a row, free disk, backups, the weights the
exhibits need, the display, the web app's address and what the QR codes point at.
"""
from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from exhibits.config import ConfigError, load_exhibits
from exhibits.show import ShowConfig, public_base_url
from exhibits.store import (MAX_WORKER_DEATHS, Store, StoreError, integrity_words, list_backups, pid_alive)

BACKUP_STALE_HOURS = 48


@dataclass
class Report:
    lines: list[tuple[str, str, str]] = field(default_factory=list)  # (level, what, fix)

    def ok(self, what: str) -> None:
        self.lines.append(("ok", what, ""))

    def warn(self, what: str, fix: str = "") -> None:
        self.lines.append(("warn", what, fix))

    def fail(self, what: str, fix: str = "") -> None:
        self.lines.append(("FAIL", what, fix))

    @property
    def failed(self) -> bool:
        return any(level == "FAIL" for level, _, _ in self.lines)

    def text(self) -> str:
        out = []
        for level, what, fix in self.lines:
            out.append(f"{level:4s}  {what}")
            if fix:
                out.append(f"      fix: {fix}")
        n_fail = sum(1 for lv, _, _ in self.lines if lv == "FAIL")
        n_warn = sum(1 for lv, _, _ in self.lines if lv == "warn")
        out.append("all checks passed" if not n_fail and not n_warn else f"{n_fail} to fix, {n_warn} to look at")
        return "\n".join(out)


def _mb(n: float) -> str:
    return f"{n / 2**20:,.1f} MB" if n < 2**30 else f"{n / 2**30:,.1f} GB"


def check_store(cfg: ShowConfig, r: Report) -> Store | None:
    db = Path(cfg.data_dir) / "kiosk.sqlite3"
    if not db.exists() and not (Path(cfg.data_dir) / "ARCHIVE").exists() and not any((Path(cfg.data_dir) / "pieces").rglob("*.png")):
        r.warn(f"no store yet at {db}", "start the kiosk once (python -m kiosk demo, or systemctl start kiosk.target)")
        return None
    if db.is_file() and db.stat().st_size:
        words = integrity_words(db)
        if words == ["ok"]:
            r.ok(f"store {db}: PRAGMA integrity_check ok ({_mb(db.stat().st_size)})")
        else:
            r.fail(f"store {db} is damaged: PRAGMA integrity_check says: {'; '.join(words[:5])}",
                   f"systemctl stop kiosk.target; python -m kiosk restore --data {cfg.data_dir}; "
                   f"systemctl start kiosk.target")
            return None
    try:
        store = Store(cfg.data_dir)
    except StoreError as exc:
        r.fail(f"store: {exc}")
        return None
    r.ok(f"archive {store.archive_id}: {store.count_pieces()} pieces, {store.count_queued()} jobs waiting")
    return store


def check_files(store: Store, r: Report) -> None:
    missing, orphans = store.file_report()
    if missing:
        ids = ", ".join(str(i) for i, _ in missing[:10]) + (" ..." if len(missing) > 10 else "")
        r.warn(f"{len(missing)} piece row(s) whose image is gone (hidden from visitors): piece {ids}",
               f"restore the images from your file backup into {store.pieces_dir}, or hide them for good on /staff")
    else:
        r.ok("every piece row has its image")
    if orphans:
        r.warn(f"{len(orphans)} file(s) in {store.pieces_dir} without a row, e.g. {orphans[0]}",
               "after a restore these are pieces made since the backup; otherwise they are safe to move away")
    else:
        r.ok("every image in the archive has its row")


def check_jobs(store: Store, r: Report) -> None:
    held = [j for j in store.jobs(["held"], limit=1000) if j.held_for_staff]
    if held:
        r.warn(f"{len(held)} job(s) held for staff after stopping the renderer {MAX_WORKER_DEATHS} times: "
               + ", ".join(f"{j.id} ({j.prompt_text[:30] or j.exhibit})" for j in held[:5]),
               "look at them on /staff (approve to try again, or cancel); the worker's log says what happened")
    stuck = [j for j in store.running() if (j.lease_until or 0) < time.time() - 60]
    if stuck:
        r.warn(f"{len(stuck)} running job(s) whose worker stopped answering", "start the worker: it re-queues them")
    failed = store.jobs(["failed"], limit=1000, source="visitor")
    if failed:
        r.warn(f"{len(failed)} visitor prompt(s) failed", "see /staff for the reasons; retry there")
    workers = [w for w in store.workers_alive() if pid_alive(w["pid"])]
    if workers:
        r.ok(f"worker alive: {', '.join(w['id'] + ' (' + w['state'] + ')' for w in workers)}")
    else:
        r.warn("no render worker is alive", "systemctl start kiosk-worker (journalctl -u kiosk-worker says why it stopped)")


def check_disk(cfg: ShowConfig, r: Report) -> None:
    usage = shutil.disk_usage(cfg.data_dir)
    need = cfg.min_free_mb * 2**20
    if usage.free < need:
        r.fail(f"disk under {cfg.data_dir}: only {_mb(usage.free)} free of {_mb(usage.total)} (the playlist pauses "
               f"below {cfg.min_free_mb} MB; work stops when it is full)",
               "free space (old exports, logs) or lower keep_playlist_pieces in kiosk.toml")
    elif usage.free < 4 * need:
        r.warn(f"disk under {cfg.data_dir}: {_mb(usage.free)} free", "plan for more space before a long run")
    else:
        r.ok(f"disk under {cfg.data_dir}: {_mb(usage.free)} free of {_mb(usage.total)}")


def check_backups(store: Store, r: Report) -> None:
    backups = list_backups(store.root)
    if not backups:
        r.warn("no backup of the store yet", f"python -m kiosk backup --data {store.root} "
                                             "(systemd/install.sh schedules one daily)")
        return
    age = (time.time() - backups[-1].stat().st_mtime) / 3600
    if age > BACKUP_STALE_HOURS:
        r.warn(f"newest backup is {age:.0f} hours old: {backups[-1]}",
               "systemctl status kiosk-backup.timer (it should run daily)")
    else:
        r.ok(f"{len(backups)} backup(s), newest {age:.1f} hours old: {backups[-1].name}")


def check_weights(cfg: ShowConfig, store: Store | None, r: Report) -> None:
    try:
        exhibits = load_exhibits(list(cfg.exhibits), cfg.exhibit_dirs)
    except ConfigError as exc:
        r.fail(f"exhibits: {exc}")
        return
    weights = Path(cfg.weights)
    empty = sorted(p.name for p in weights.glob("*") if p.is_file() and p.stat().st_size == 0) \
        if weights.is_dir() else []
    if empty:
        r.fail(f"empty weights file(s) in {weights}: {', '.join(empty)}",
               "delete them and run python -m kiosk fetch-models NAME again")
    reported = (store.get_setting("exhibits_available") or {}) if store else {}
    for name, ex in exhibits.items():
        why = reported.get(name)
        if why == "ok":
            r.ok(f"exhibit {name}: ready ({ex.generator})")
        elif why:
            r.fail(f"exhibit {name} cannot run: {why}", "python -m kiosk models shows what is installed")
        else:
            r.warn(f"exhibit {name}: the worker has not reported on it yet", "start the worker and run doctor again")


def check_display(r: Report, env_file: Path = Path("/etc/kiosk/display.env")) -> None:
    env = dict(os.environ)
    if env_file.is_file():
        for line in env_file.read_text().splitlines():
            if "=" in line and not line.lstrip().startswith("#"):
                k, v = line.split("=", 1)
                env[k.strip()] = v.strip()
    driver = env.get("SDL_VIDEODRIVER", "x11" if env.get("DISPLAY") else "")
    if driver == "x11":
        disp = env.get("DISPLAY", ":0")
        sock = Path("/tmp/.X11-unix") / f"X{disp.lstrip(':').split('.')[0]}"
        if sock.exists():
            r.ok(f"display: X server {disp} is up")
        else:
            r.fail(f"display: no X server on {disp} ({sock} missing)",
                   "enable the kiosk user's autologin session (README: Exhibition checklist), or use "
                   "systemd/install.sh --video kms / wayland")
    elif driver in ("kmsdrm", "wayland"):
        cards = sorted(Path("/dev/dri").glob("card*")) if Path("/dev/dri").is_dir() else []
        if driver == "kmsdrm" and not cards:
            r.fail("display: SDL_VIDEODRIVER=kmsdrm but no /dev/dri/card*", "install the GPU driver (nvidia-driver "
                   "with nvidia-drm.modeset=1) and add the kiosk user to the video and render groups")
        else:
            r.ok(f"display: {driver}" + (f" ({', '.join(c.name for c in cards)})" if cards else ""))
    elif driver == "dummy":
        r.warn("display: SDL_VIDEODRIVER=dummy (nothing is shown on a screen)", "unset it on the exhibit machine")
    else:
        r.warn("display: no DISPLAY and no /etc/kiosk/display.env here",
               "fine over ssh; on the exhibit machine install the units with systemd/install.sh")


def check_address(cfg: ShowConfig, store: Store | None, r: Report, timeout: float = 2.0) -> None:
    url = public_base_url(cfg)
    host = urlparse(url).hostname or ""
    if host in ("localhost", "::1") or host.startswith("127."):
        r.fail(f"QR codes point at {url}: phones cannot reach this machine's loopback address",
               "set public_url = \"http://<LAN address>:<port>\" under [show] in kiosk.toml, or connect the network")
    else:
        r.ok(f"QR codes point at {url}")
    listen = (store.get_setting("web_listen") or {}) if store else {}
    if listen and pid_alive(listen.get("pid")):
        if int(listen.get("port", 0)) != urlparse(url).port and not cfg.public_url:
            r.fail(f"the web app listens on port {listen['port']} but the QR codes say port {urlparse(url).port}",
                   "give both the same port (kiosk.toml [show] port) or set public_url")
    else:
        r.warn("the web app is not running", "systemctl start kiosk-web")
        return
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=timeout) as resp:
            r.ok(f"{url}/healthz answers {resp.status}")
    except urllib.error.HTTPError as exc:
        r.fail(f"{url}/healthz answers {exc.code}: {exc.read()[:300].decode(errors='replace')}",
               "see the store checks above")
    except (OSError, socket.timeout) as exc:
        r.fail(f"{url} cannot be reached from this machine ({exc})",
               "check the address (ip addr), the firewall (port open on the LAN) and public_url in kiosk.toml")


def doctor(cfg: ShowConfig) -> Report:
    r = Report()
    if not Path(cfg.data_dir).is_dir():
        r.fail(f"no archive at {cfg.data_dir}", "give --data (or data_dir in kiosk.toml), or start the kiosk once")
        return r
    store = check_store(cfg, r)
    if store is not None:
        try:
            check_files(store, r)
            check_jobs(store, r)
            check_backups(store, r)
        except (StoreError, sqlite3.Error) as exc:
            r.fail(f"store: {exc}")
    check_disk(cfg, r)
    check_weights(cfg, store, r)
    check_display(r)
    check_address(cfg, store, r)
    return r
