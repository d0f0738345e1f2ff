"""The show configuration: which exhibits run, where the archive lives, how the screen and the web app behave.

Read from an optional TOML file (``kiosk.toml``) with every key defaulted, then
overridden by command-line flags. Validated once, frozen, passed down.
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from exhibits.config import ConfigError, _Reader

# the worker's render precision (renderer.device.render_dtype): auto measures bfloat16 against float32 on the CPU
PRECISIONS = ("auto", "float32", "bfloat16", "float16")


def default_data_dir() -> Path:
    base = os.environ.get("KIOSK_DATA") or os.environ.get("XDG_DATA_HOME") and Path(os.environ["XDG_DATA_HOME"]) / "kiosk"
    return Path(base) if base else Path.home() / ".local" / "share" / "kiosk"


@dataclass(frozen=True)
class ShowConfig:
    data_dir: Path = field(default_factory=default_data_dir)
    weights_dir: Path | None = None  # default: data_dir / "weights"
    exhibits: tuple[str, ...] = ("demo",)  # what the playlist draws from
    tap_exhibit: str | None = None  # what a tap makes now (default: the first instant exhibit)
    visitor_exhibit: str | None = None  # what a visitor's prompt makes (default: first exhibit)
    exhibit_dirs: tuple[Path, ...] = ()  # the artist's own exhibit TOMLs
    moderate_prompts: bool = False  # hold visitors' prompts until staff approve them
    # display
    fullscreen: bool = True
    width: int = 1280
    height: int = 720
    hold_seconds: float = 20.0  # how long a finished piece stays before the next
    crossfade_seconds: float = 1.2
    fps: int = 60
    dwell_seconds: float | None = None  # a visitor's or a tap's piece stays at least this long (default: hold)
    attract_seconds: float = 90.0  # nobody tapped for this long: invite the room to touch (0: never)
    rotate: int = 0  # degrees clockwise the picture is turned for a monitor mounted on its side: 0, 90, 180, 270
    display_index: int = 0  # which monitor on a multi-monitor machine (0: the first)
    hide_cursor: bool = True  # full screen: no mouse pointer (touches still count)
    drift_pixels: int = 6  # burn-in protection: the whole picture wanders this far, slowly
    refresh_minutes: float = 30.0  # burn-in protection: at least this often the screen fades through black
    opening_hours: tuple[tuple[int, int], ...] = ()  # (open, close) in minutes after midnight; () = always open
    play_motion: str = "loop"  # a piece's moving version on screen: loop (walk, story) | timelapse | off (stills)
    # web
    host: str = "0.0.0.0"
    port: int = 8080
    public_url: str | None = None  # what the QR codes point at; default: http://<LAN address>:<port>
    staff_password: str | None = None  # plain text (deprecated: use `kiosk staff-password`, which stores a hash)
    staff_password_hash: str | None = None  # salted scrypt hash written by `kiosk staff-password`
    staff_local_only: bool = False  # no password: staff pages answer 127.0.0.1 only (never behind a proxy)
    staff_session_hours: float = 12.0  # a staff login lasts this long
    trusted_proxies: int | tuple[str, ...] = 0  # hop count, or the proxies' addresses; 0: no proxy
    max_connections_per_address: int = 24  # more open connections from one client are refused
    export_cache_mb: int = 2048  # prints and AR packs kept for download; least recently used go first
    blocked_words: tuple[str, ...] = ()  # this show's own block list (held for staff, never dropped)
    prompt_rate_limit: str = "5 per minute"
    config_path: Path | None = None  # the kiosk.toml this was read from (staff password changes are seen live)
    # worker
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto | float32 | bfloat16 | float16 (auto: measured on the CPU, see renderer.device)
    worker_threads: int = 0  # torch CPU threads; 0: all cores but one, which is left to the display
    cpu_memory_reuse: bool = True  # CPU worker keeps freed memory for its next step (renderer.cpu_memory)
    queue_depth: int = 1  # playlist jobs kept waiting
    playlist_interval: float = 20.0  # at least this many seconds between playlist pieces (taps/visitors: at once)
    keep_playlist_pieces: int = 5000  # older playlist pieces are pruned (visitors' and curated ones never)
    min_free_mb: int = 1024  # below this much free disk the playlist pauses
    worker_lease: float = 30.0  # seconds a job stays with a worker that stopped answering before it is re-queued

    @property
    def dwell(self) -> float:
        return self.hold_seconds if self.dwell_seconds is None else self.dwell_seconds

    @property
    def weights(self) -> Path:
        return self.weights_dir or self.data_dir / "weights"

    def with_overrides(self, **kw: Any) -> "ShowConfig":
        return replace(self, **{k: v for k, v in kw.items() if v is not None})


_TYPES = {
    "data_dir": (str, "a directory path"), "weights_dir": (str, "a directory path"),
    "exhibits": (list, "a list of exhibit names"), "tap_exhibit": (str, "an exhibit name"),
    "visitor_exhibit": (str, "an exhibit name"), "exhibit_dirs": (list, "a list of directory paths"),
    "moderate_prompts": (bool, "true or false"), "fullscreen": (bool, "true or false"),
    "width": (int, "a whole number of pixels"), "height": (int, "a whole number of pixels"),
    "hold_seconds": ((int, float), "a number of seconds"), "crossfade_seconds": ((int, float), "a number of seconds"),
    "fps": (int, "frames per second"), "host": (str, "an address to listen on"), "port": (int, "a TCP port"),
    "public_url": (str, "a URL like http://192.168.1.20:8080"), "staff_password": (str, "a password"),
    "staff_password_hash": (str, "a hash written by `python -m kiosk staff-password`"),
    "staff_local_only": (bool, "true or false"), "staff_session_hours": ((int, float), "a number of hours"),
    "trusted_proxies": ((int, list), "a hop count like 1, or a list of proxy addresses like [\"127.0.0.1\"]"),
    "max_connections_per_address": (int, "a whole number of connections"),
    "export_cache_mb": (int, "a whole number of megabytes"), "blocked_words": (list, "a list of words"),
    "prompt_rate_limit": (str, "a limit like '5 per minute'"), "device": (str, "auto, cpu, cuda or cuda:N"),
    "precision": (str, ", ".join(PRECISIONS[:-1]) + " or " + PRECISIONS[-1]),
    "queue_depth": (int, "a whole number"), "worker_threads": (int, "a whole number (0: automatic)"),
    "cpu_memory_reuse": (bool, "true or false"), "playlist_interval": ((int, float), "a number of seconds"),
    "keep_playlist_pieces": (int, "a whole number of pieces"), "min_free_mb": (int, "a whole number of megabytes"),
    "dwell_seconds": ((int, float), "a number of seconds"), "attract_seconds": ((int, float), "a number of seconds"),
    "rotate": (int, "0, 90, 180 or 270 (degrees clockwise)"), "display_index": (int, "a monitor number (0: the first)"),
    "hide_cursor": (bool, "true or false"), "drift_pixels": (int, "a whole number of pixels"),
    "refresh_minutes": ((int, float), "a number of minutes"),
    "opening_hours": ((str, list), 'opening times like "10:00-18:00" or ["10:00-13:00", "14:00-20:00"]'),
    "worker_lease": ((int, float), "a number of seconds"),
    "play_motion": (str, "loop, timelapse or off"),
}
PLAY_MOTION = ("loop", "timelapse", "off")  # kiosk.display.motion orders a piece's videos for each


def load_show(path: str | Path | None) -> ShowConfig:
    """Load ``kiosk.toml`` (all keys optional, under a ``[show]`` table or at the top level)."""
    if path is None:
        return ShowConfig()
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(path, "(file)", "an existing show configuration file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "(syntax)", f"valid TOML ({exc})") from None
    table = data.get("show", data)
    r = _Reader(path, table, "show." if "show" in data else "")
    r.check_unknown(set(_TYPES))
    kw: dict[str, Any] = {}
    for key, (types, expected) in _TYPES.items():
        if key in table:
            kw[key] = r.get(key, types, expected)
    for key in ("data_dir", "weights_dir"):
        if key in kw:
            kw[key] = Path(kw[key]).expanduser()
    if "exhibit_dirs" in kw:
        kw["exhibit_dirs"] = tuple(Path(p).expanduser() for p in kw["exhibit_dirs"])
    if "exhibits" in kw:
        if not kw["exhibits"] or not all(isinstance(x, str) for x in kw["exhibits"]):
            raise ConfigError(path, r.key("exhibits"), "a non-empty list of exhibit names", kw["exhibits"])
        kw["exhibits"] = tuple(kw["exhibits"])
    if "port" in kw and not 1 <= kw["port"] <= 65535:
        raise ConfigError(path, r.key("port"), "a TCP port from 1 to 65535", kw["port"])
    if "trusted_proxies" in kw:
        tp = kw["trusted_proxies"]
        if isinstance(tp, list):
            if not all(isinstance(a, str) and _is_address(a) for a in tp):
                raise ConfigError(path, r.key("trusted_proxies"), "IP addresses or networks like \"10.0.0.0/8\"", tp)
            kw["trusted_proxies"] = tuple(tp)
        elif isinstance(tp, bool) or not 0 <= tp <= 5:
            raise ConfigError(path, r.key("trusted_proxies"), "a hop count from 0 to 5", tp)
    if kw.get("staff_local_only") and kw.get("trusted_proxies"):
        raise ConfigError(path, r.key("staff_local_only"), "false when trusted_proxies is set (behind a proxy every "
                          "visitor arrives from this machine, so loopback cannot mean staff)", True)
    if "blocked_words" in kw:
        if not all(isinstance(w, str) and w.strip() for w in kw["blocked_words"]):
            raise ConfigError(path, r.key("blocked_words"), "a list of non-empty words", kw["blocked_words"])
        kw["blocked_words"] = tuple(kw["blocked_words"])
    if "rotate" in kw and kw["rotate"] not in (0, 90, 180, 270):
        raise ConfigError(path, r.key("rotate"), "0, 90, 180 or 270 (degrees clockwise)", kw["rotate"])
    for key in ("dwell_seconds", "attract_seconds", "hold_seconds", "crossfade_seconds", "refresh_minutes",
                "display_index", "drift_pixels"):
        if key in kw and kw[key] < 0:
            raise ConfigError(path, r.key(key), _TYPES[key][1] + " (not negative)", kw[key])
    if "opening_hours" in kw:
        try:
            kw["opening_hours"] = parse_opening_hours(kw["opening_hours"])
        except ValueError as exc:
            raise ConfigError(path, r.key("opening_hours"), _TYPES["opening_hours"][1] + f" ({exc})",
                              kw["opening_hours"]) from None
    if "play_motion" in kw and kw["play_motion"] not in PLAY_MOTION:
        raise ConfigError(path, r.key("play_motion"), _TYPES["play_motion"][1], kw["play_motion"])
    if "device" in kw and not (kw["device"] in ("auto", "cpu", "cuda") or kw["device"].startswith("cuda:")):
        raise ConfigError(path, r.key("device"), "auto, cpu, cuda or cuda:N", kw["device"])
    if "precision" in kw and kw["precision"] not in PRECISIONS:
        raise ConfigError(path, r.key("precision"), _TYPES["precision"][1], kw["precision"])
    return ShowConfig(**kw, config_path=path)


def _is_address(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_network(text, strict=False)
        return True
    except ValueError:
        return False


def parse_opening_hours(value: str | list) -> tuple[tuple[int, int], ...]:
    """ "10:00-18:00" or a list of such windows -> ((600, 1080),) in minutes after midnight.

    A window may run past midnight ("18:00-02:00"); "" or [] means always open."""
    items = [value] if isinstance(value, str) else list(value)
    windows = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"{item!r} is not text")
        if not item.strip():
            continue
        try:
            a, b = (part.strip() for part in item.split("-"))
            opens, closes = (_minutes(x) for x in (a, b))
        except ValueError:
            raise ValueError(f"{item!r} is not HH:MM-HH:MM") from None
        if opens == closes:
            raise ValueError(f"{item!r} opens and closes at the same time")
        windows.append((opens, closes))
    return tuple(windows)


def _minutes(hhmm: str) -> int:
    h, m = hhmm.split(":")
    if not (h.isdigit() and m.isdigit() and len(m) == 2):
        raise ValueError(hhmm)
    h_, m_ = int(h), int(m)
    if not (0 <= h_ <= 24 and 0 <= m_ < 60) or (h_ == 24 and m_):
        raise ValueError(hhmm)
    return h_ * 60 + m_


def is_open(cfg: ShowConfig, when: float | None = None) -> bool:
    """Whether the show is open at ``when`` (seconds since the epoch, local time; default now)."""
    import time

    if not cfg.opening_hours:
        return True
    t = time.localtime(when)
    minute = t.tm_hour * 60 + t.tm_min
    for opens, closes in cfg.opening_hours:
        if opens < closes and opens <= minute < closes:
            return True
        if opens > closes and (minute >= opens or minute < closes):  # past midnight
            return True
    return False


def lan_address() -> str:
    """This machine's address on the local network (no packet is sent), or 127.0.0.1."""
    import socket

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("10.254.254.254", 9))  # UDP connect only picks a route; nothing is sent
        return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"
    finally:
        s.close()


def public_base_url(cfg: ShowConfig) -> str:
    """Where phones reach the web app: ``public_url`` if set, else http://<LAN address>:<port>."""
    if cfg.public_url:
        return cfg.public_url.rstrip("/")
    host = cfg.host if cfg.host not in ("0.0.0.0", "::", "") else lan_address()
    return f"http://{host}:{cfg.port}"


def piece_url(cfg: ShowConfig, piece_id: int) -> str:
    return f"{public_base_url(cfg)}/p/{piece_id}"
