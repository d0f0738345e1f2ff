"""``python -m kiosk <command>``: one entry point for the artist, the staff and systemd.

The display and the web app never import torch; only ``worker``, ``render`` and
``fetch-models`` reach into ``renderer``.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from exhibits.config import ConfigError, exhibit_paths, load_exhibit, load_exhibits
from exhibits.show import ShowConfig, load_show, public_base_url

log = logging.getLogger("kiosk")

EPILOG = """
first run (no weights needed):   python -m kiosk demo --windowed
an exhibit machine:              python -m kiosk fetch-models stylegan1-ffhq-1024
                                 python -m kiosk demo --exhibits strange-attractions doorways
merch batch:                     python -m kiosk render strange-attractions --count 5000
check an exhibit file:           python -m kiosk exhibits --check my_exhibit.toml
"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="show configuration TOML (kiosk.toml); every key is optional")
    p.add_argument("--data", type=Path, help="archive directory: SQLite store, pieces, progress frames "
                                             "(default $KIOSK_DATA or ~/.local/share/kiosk)")
    p.add_argument("--weights", type=Path, help="model weights directory (default DATA/weights)")
    p.add_argument("--exhibits", nargs="+", metavar="NAME", help="exhibits the playlist draws from (default: demo)")
    p.add_argument("--exhibit-dir", action="append", type=Path, default=None,
                   help="extra directory of the artist's exhibit TOML files (repeatable)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (worker only)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kiosk", description="A generative-art installation: Doorways and Strange Attractions.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="command")

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        _common(p)
        return p

    p = add("demo", "run the whole show: worker and web app in the background, the display in front")
    p.add_argument("--windowed", action="store_true", help="a window instead of full screen")
    p.add_argument("--port", type=int, help="web app port (default 8080)")
    p.add_argument("--no-web", action="store_true", help="do not start the phone web app")
    p.add_argument("--seconds", type=float, help="stop after this many seconds (for a quick look)")
    p.add_argument("--screenshot", type=Path, help="save the last frame to this PNG")

    p = add("display", "the full-screen kiosk display (pygame)")
    p.add_argument("--windowed", action="store_true", help="a window instead of full screen")
    p.add_argument("--seconds", type=float, help="stop after this many seconds")
    p.add_argument("--screenshot", type=Path, help="save the last frame to this PNG")

    p = add("worker", "the render worker: claims jobs and makes pieces (the only torch user)")
    p.add_argument("--once", action="store_true", help="render one job and exit")

    p = add("web", "the phone and staff web app (waitress)")
    p.add_argument("--port", type=int, help="port (default 8080)")
    p.add_argument("--host", help="address to listen on (default 0.0.0.0)")

    p = add("render", "batch-render pieces of one exhibit into the archive (resumable)")
    p.add_argument("exhibit", help="exhibit name, e.g. strange-attractions")
    p.add_argument("--count", type=int, help="how many pieces (default: one per realm set, e.g. every Doorways "
                                             "pair; 1 for an exhibit without sets)")
    p.add_argument("--seed", type=int, default=0, help="first seed; piece i uses seed+i")
    p.add_argument("--batch", help="batch name (default EXHIBIT-SEED-COUNT); the same name resumes")
    p.add_argument("--sigma", type=float, help="fixed sigma instead of the exhibit's range")
    p.add_argument("--prompt", help="prompt text ('a:1 | b:1') instead of the exhibit's own")
    p.add_argument("--sets", nargs="+", metavar="SET",
                   help="only these realm sets: a group (Afterlife), a pair (Heaven/Hell) or a realm (Moon)")

    p = add("exhibits", "list the exhibits, or check exhibit files")
    p.add_argument("--check", nargs="+", type=Path, metavar="FILE", help="validate these TOML files")

    p = add("status", "queue, workers and archive at a glance")

    p = add("doctor", "check the archive, disk, backups, weights, display, address and QR URL; say what to fix")

    p = add("backup", "copy the store with SQLite's online backup (safe while the show runs); keeps the newest N")
    p.add_argument("--to", type=Path, help="backup directory (default DATA/backups)")
    p.add_argument("--keep", type=int, default=14, help="how many backups to keep (default 14)")

    p = add("restore", "put a backup in place of the store (stop the kiosk first: systemctl stop kiosk.target)")
    p.add_argument("backup", nargs="?", type=Path, help="backup file (default: the newest in DATA/backups)")
    p.add_argument("--list", action="store_true", help="list the backups and exit")
    p.add_argument("--force", action="store_true", help="restore a backup of another archive")

    p = add("models", "list known model checkpoints and whether they are installed")
    p = add("fetch-models", "download model checkpoints into the weights directory (resumes, verifies)")
    p.add_argument("names", nargs="+", help="checkpoint names (see: python -m kiosk models)")

    p = add("export", "export finished pieces: print PDF, AR texture packs, GLB, QR")
    p.add_argument("pieces", nargs="*", type=int, help="piece ids (default: all pieces curated 'keep')")
    p.add_argument("--kind", default="bundle", help="exporter name: bundle (print PDF + TIFF, AR packs, GLB, USDZ), "
                                                     "print, ar_packs, effecthouse, lensstudio, sparkar, glb, usdz, ...")
    p.add_argument("--out", type=Path, default=Path("exports"), help="output directory")
    p.add_argument("--workers", type=int, help="processes exporting at once (default: one per core)")

    p = add("continue", "continue a finished piece from an edited picture of it (queued as a staff job)")
    p.add_argument("piece", type=int, help="id of the piece to continue")
    p.add_argument("--image", type=Path, help="the edited picture (default: the piece itself)")
    p.add_argument("--steps", type=int, help="optimisation steps for the new run")
    p.add_argument("--lr", type=float, help="learning rate for the new run")
    p.add_argument("--cut-pow", type=float, nargs="+", metavar="POW",
                   help="patch-size schedule from the init image: one value or START END (above 1: small patches)")
    p.add_argument("--seed", type=int, help="a new seed (default: the piece's)")

    p = add("staff-password", "set the staff password (a salted hash goes into --config; never the plain text)")
    p.add_argument("--stdin", action="store_true", help="read the password from standard input (for scripts)")

    p = add("contact-sheet", "a labelled grid PNG of finished pieces (seed, sigma, piece id, curation)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--batch", help="pieces of this batch, in batch order (see: python -m kiosk render)")
    which.add_argument("--exhibit", help="pieces of this exhibit, newest first")
    p.add_argument("--curation", choices=("keep", "reject", "unreviewed"), help="only pieces with this verdict")
    p.add_argument("--limit", type=int, default=96, help="at most this many pieces (default 96)")
    p.add_argument("--cols", type=int, default=8, help="pieces per row (default 8)")
    p.add_argument("--thumb", type=int, default=256, help="cell size in pixels (default 256)")
    p.add_argument("--title", help="heading printed on the sheet")
    p.add_argument("--out", type=Path, required=True, help="PNG file to write, or .pdf for A4 pages with captions "
                                                          "(at most 4 pieces across)")

    p = add("suffix-sheet", "prompt experiment: the same seeds with and without style modifiers, side by side")
    p.add_argument("exhibit", help="exhibit whose generator and settings render the cells")
    p.add_argument("--prompt", required=True, help="prompt text ('a:1 | b:-0.5')")
    p.add_argument("--modifier", action="append", required=True,
                   help="a style modifier to compare, e.g. 'rendered in unreal engine' (repeatable)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds, one row each (default 0 1 2)")
    p.add_argument("--size", type=int, help="canvas side in pixels (default: the exhibit's canvas)")
    p.add_argument("--thumb", type=int, default=256, help="cell size on the sheet (default 256)")
    p.add_argument("--out", type=Path, required=True, help="PNG file to write")
    return parser


def show_config(args: argparse.Namespace) -> ShowConfig:
    cfg = load_show(args.config)
    over = {
        "data_dir": args.data, "weights_dir": args.weights, "device": args.device,
        "exhibits": tuple(n.replace("_", "-") for n in args.exhibits) if args.exhibits else None,
        "exhibit_dirs": tuple(args.exhibit_dir) if args.exhibit_dir else None,
    }
    if getattr(args, "windowed", False):
        over["fullscreen"] = False
    if getattr(args, "port", None):
        over["port"] = args.port
    if getattr(args, "host", None):
        over["host"] = args.host
    cfg = cfg.with_overrides(**over)
    load_exhibits(list(cfg.exhibits), cfg.exhibit_dirs)  # unknown exhibit: ConfigError before anything starts
    return cfg


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")


def _child_args(args: argparse.Namespace, cfg: ShowConfig) -> list[str]:
    out = ["--data", str(cfg.data_dir), "--exhibits", *cfg.exhibits]
    if args.config:
        out += ["--config", str(args.config)]
    if args.weights:
        out += ["--weights", str(args.weights)]
    for d in cfg.exhibit_dirs:
        out += ["--exhibit-dir", str(d)]
    if args.device:
        out += ["--device", args.device]
    return out


def _exit_on_sigterm() -> None:
    # systemd and the demo stop us with SIGTERM: leave through the normal path so children are stopped too.
    def handler(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, handler)


class Supervisor:
    """Runs the demo's background processes and restarts one that dies, with backoff (1 s doubling to 30 s; back
    to 1 s once a process has stayed up for a minute), as systemd does for an exhibit machine."""

    def __init__(self, specs: dict[str, tuple[list[str], dict]], *, first: float = 1.0, most: float = 30.0,
                 settle: float = 60.0):
        self.specs, self.first, self.most, self.settle = specs, first, most, settle
        self.procs: dict[str, subprocess.Popen] = {}
        self.restarts: dict[str, int] = {name: 0 for name in specs}
        self._delay = {name: first for name in specs}
        self._started: dict[str, float] = {}
        self._due: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="demo-supervisor", daemon=True)

    def _start(self, name: str) -> None:
        cmd, kw = self.specs[name]
        self.procs[name] = subprocess.Popen(cmd, **kw)
        self._started[name] = time.monotonic()
        log.info("started %s (pid %d)", name, self.procs[name].pid)

    def start(self) -> "Supervisor":
        for name in self.specs:
            self._start(name)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.25):
            now = time.monotonic()
            for name, proc in list(self.procs.items()):
                if proc.poll() is None or self._stop.is_set():
                    continue
                if name not in self._due:
                    if now - self._started[name] > self.settle:
                        self._delay[name] = self.first
                    self._due[name] = now + self._delay[name]
                    log.warning("%s (pid %d) exited with %s; restarting it in %.0f s", name, proc.pid,
                                proc.returncode, self._delay[name])
                    self._delay[name] = min(self._delay[name] * 2, self.most)
                elif now >= self._due[name]:
                    del self._due[name]
                    self.restarts[name] += 1
                    self._start(name)

    def stop(self, timeout: float = 20.0) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("pid %d did not stop in time; killing it", proc.pid)
                proc.kill()
                proc.wait(timeout=5)


def cmd_demo(args: argparse.Namespace, cfg: ShowConfig) -> int:
    from kiosk.display import run as run_display

    _exit_on_sigterm()
    exe = [sys.executable, "-m", "kiosk"]
    # The renderer runs at a lower priority so the display holds its frame rate on a small machine.
    specs = {"worker": ([*exe, "worker", *_child_args(args, cfg)], {"preexec_fn": lambda: os.nice(10)})}
    if not args.no_web:
        specs["web"] = ([*exe, "web", "--port", str(cfg.port), *_child_args(args, cfg)], {})
        log.info("phone web app: %s", public_base_url(cfg))
    children = Supervisor(specs).start()
    try:
        run_display(cfg, max_seconds=args.seconds, screenshot=args.screenshot)
    finally:
        children.stop()
    return 0


def cmd_display(args: argparse.Namespace, cfg: ShowConfig) -> int:
    from kiosk.display import run as run_display

    from kiosk.display.staff import EXIT_STAFF_QUIT

    _exit_on_sigterm()
    stats = run_display(cfg, max_seconds=args.seconds, screenshot=args.screenshot)
    return EXIT_STAFF_QUIT if stats.staff_quit else 0


def cmd_worker(args: argparse.Namespace, cfg: ShowConfig) -> int:
    from renderer.worker import main

    return main(cfg, once=args.once)


def cmd_web(args: argparse.Namespace, cfg: ShowConfig) -> int:
    from kiosk.web import serve

    serve(cfg)
    return 0


def cmd_render(args: argparse.Namespace, cfg: ShowConfig) -> int:
    from kiosk.batch import render_batch

    return render_batch(cfg, args.exhibit.replace("_", "-"), count=args.count, seed=args.seed, batch=args.batch,
                        sigma=args.sigma, prompt=args.prompt, sets=args.sets, keep_memory=True)


def cmd_exhibits(args: argparse.Namespace, cfg: ShowConfig) -> int:
    if args.check:
        bad = 0
        for path in args.check:
            try:
                ex = load_exhibit(path)
            except ConfigError as exc:
                print(f"error: {exc}", file=sys.stderr)
                bad += 1
            else:
                print(f"ok: {path} ({ex.title}, generator {ex.generator})")
        return 1 if bad else 0
    for name, path in exhibit_paths(cfg.exhibit_dirs).items():
        try:
            ex = load_exhibit(path)
        except ConfigError as exc:
            print(f"{name:22s} ERROR {exc}")
            continue
        sets = len(ex.all_sets())
        print(f"{name:22s} {ex.generator:11s} {ex.width}x{ex.height}  {ex.title}" + (f"  ({sets} realm sets)" if sets else ""))
    return 0


def cmd_status(args: argparse.Namespace, cfg: ShowConfig) -> int:
    from exhibits.store import Store, pid_alive

    store = Store(cfg.data_dir)
    # A worker row whose process has ended (a finished batch, a SIGKILL) is not alive, however fresh its beat.
    workers = [w for w in store.workers_alive() if pid_alive(w["pid"])]
    print(f"archive: {cfg.data_dir}  pieces: {store.count_pieces()}  queued: {store.count_queued()}")
    print(f"workers alive: {len(workers)}" + "".join(f"\n  {w['id']} {w['state']} {w['device']} {w['message']}" for w in workers))
    for job in store.jobs(["running", "queued", "held"], limit=20):
        print(f"  job {job.id:5d} {job.status:8s} {job.source:8s} {job.exhibit:20s} {job.prompt_text[:50]}")
    listen = store.get_setting("web_listen") or {}
    if listen and pid_alive(listen.get("pid")):
        print(f"web app: listening on {listen['host']}:{listen['port']} (pid {listen['pid']}); QR codes: {listen['url']}")
    else:
        print(f"web app: not running (QR codes point at {public_base_url(cfg)})")
    return 0


def cmd_doctor(args: argparse.Namespace, cfg: ShowConfig) -> int:
    from kiosk.doctor import doctor

    report = doctor(cfg)
    print(report.text())
    return 1 if report.failed else 0


def cmd_backup(args: argparse.Namespace, cfg: ShowConfig) -> int:
    from exhibits.store import Store

    print(Store(cfg.data_dir).backup(args.to, keep=args.keep))
    return 0


def cmd_restore(args: argparse.Namespace, cfg: ShowConfig) -> int:
    from exhibits.store import list_backups, restore

    if args.list:
        for b in list_backups(cfg.data_dir):
            print(f"{b}  {time.strftime('%Y-%m-%d %H:%M', time.localtime(b.stat().st_mtime))}  {b.stat().st_size} bytes")
        return 0
    db = restore(cfg.data_dir, args.backup, force=args.force)
    print(f"restored {db}; check it with: python -m kiosk doctor --data {cfg.data_dir}")
    return 0


def cmd_models(args: argparse.Namespace, cfg: ShowConfig) -> int:
    from renderer import weights

    for row in weights.status(cfg.weights):
        print(f"{row['name']:32s} {row['state']:10s} {row.get('family', ''):12s} {row.get('description', '')}")
    return 0


def cmd_fetch_models(args: argparse.Namespace, cfg: ShowConfig) -> int:
    from renderer import weights

    for name in args.names:
        path = weights.fetch(name, cfg.weights)
        print(f"{name}: {path}")
    return 0


def cmd_export(args: argparse.Namespace, cfg: ShowConfig) -> int:
    from exhibits.store import Store
    from filters import registry

    store = Store(cfg.data_dir)
    pieces = [store.get_piece(i, include_hidden=True) for i in args.pieces] if args.pieces else \
        store.recent_pieces(100000, curation="keep", include_hidden=True)
    missing = [i for i, p in zip(args.pieces, pieces) if p is None]
    if missing:
        print(f"error: no piece with id {', '.join(map(str, missing))}", file=sys.stderr)
        return 2
    if not pieces:
        print("nothing to export: no piece ids given and no piece is curated 'keep'", file=sys.stderr)
        return 1
    accepted = registry.exporter_options(args.kind)
    opts: dict = {}
    if "weights_dir" in accepted:
        opts["weights_dir"] = str(cfg.weights)
    elif args.kind == "bundle":
        opts["options"] = {"print": {"weights_dir": str(cfg.weights)}}
    from filters.parallel import Item, export_many

    def meta(p: Any) -> dict:
        out = {**p.public(), "piece_id": p.id, "params": p.params, "models": p.models}
        animation = p.extra.get("mp4") or p.extra.get("gif")  # a Doorways timelapse, for effecthouse_sequence
        if animation:
            out["animation"] = str(store.path(animation))
        return out

    items = [Item(str(store.path(p.image_path)), meta(p), str(args.out / f"piece-{p.id}"), f"piece-{p.id}")
             for p in pieces]
    result = export_many(items, args.kind, opts, workers=args.workers, weights_dir=cfg.weights,
                         progress=len(items) > 1)
    for i in sorted(result.done):
        for path in result.done[i]:
            print(path)
    for i, error in sorted(result.failed.items()):
        print(f"error: piece {pieces[i].id}: {error}", file=sys.stderr)
    return 1 if result.failed else 0


def cmd_continue(args: argparse.Namespace, cfg: ShowConfig) -> int:
    from exhibits.store import Store
    from kiosk.surgery import continue_piece

    cut_pow = None if not args.cut_pow else args.cut_pow[0] if len(args.cut_pow) == 1 else args.cut_pow
    job = continue_piece(Store(cfg.data_dir), args.piece, args.image, steps=args.steps, cut_pow=cut_pow,
                         lr=args.lr, seed=args.seed)
    print(f"job {job.id} queued: piece {args.piece} continues from {job.params['init_image']} "
          f"({job.exhibit}, seed {job.seed}); watch it with: python -m kiosk status")
    return 0


def cmd_contact_sheet(args: argparse.Namespace, cfg: ShowConfig) -> int:
    from exhibits.store import Store
    from kiosk.contact_sheet import contact_sheet, select_pieces

    store = Store(cfg.data_dir)
    exhibit = args.exhibit.replace("_", "-") if args.exhibit else None
    pieces = select_pieces(store, batch=args.batch, exhibit=exhibit, curation=args.curation, limit=args.limit)
    if not pieces:
        what = f"batch {args.batch}" if args.batch else f"exhibit {exhibit}" if exhibit else "the archive"
        print(f"no pieces in {what}" + (f" curated {args.curation!r}" if args.curation else ""), file=sys.stderr)
        return 1
    title = args.title or " · ".join(filter(None, [args.batch or exhibit or "all pieces", args.curation,
                                                   f"{len(pieces)} pieces"]))
    if args.out.suffix.lower() == ".pdf":  # for the zine table: A4 pages, captions, PDF/A
        from filters.sheet import contact_sheet_pdf

        items = [(store.path(p.image_path), {**p.public(), "piece_id": p.id}) for p in pieces]
        print(contact_sheet_pdf(items, args.out, cols=min(args.cols, 4), title=title))
        return 0
    print(contact_sheet(store, pieces, args.out, cols=args.cols, thumb=args.thumb, title=title))
    return 0


def cmd_staff_password(args: argparse.Namespace, cfg: ShowConfig) -> int:
    import getpass

    from kiosk.web.security import hash_password, write_password_hash

    if args.config is None:
        print("error: name the show configuration to write: --config /path/to/kiosk.toml", file=sys.stderr)
        return 2
    if args.stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("new staff password: ")
        if getpass.getpass("again: ") != password:
            print("error: the two passwords differ; nothing changed", file=sys.stderr)
            return 1
    if len(password) < 8:
        print("error: use at least 8 characters; nothing changed", file=sys.stderr)
        return 1
    write_password_hash(args.config, hash_password(password))
    print(f"staff password set in {args.config} (salted scrypt hash); every staff session made before is ended")
    return 0


def cmd_suffix_sheet(args: argparse.Namespace, cfg: ShowConfig) -> int:
    from exhibits.config import load_exhibits
    from kiosk.prompt_lab import suffix_grid, suffix_sheet

    name = args.exhibit.replace("_", "-")
    ex = load_exhibits([name], cfg.exhibit_dirs)[name]
    rows = suffix_grid(ex, args.prompt, args.modifier, args.seeds, device=cfg.device, weights_dir=cfg.weights,
                       size=args.size, progress=lambda msg: log.info("rendering %s", msg))
    print(suffix_sheet(rows, args.modifier, args.seeds, args.prompt, args.out, thumb=args.thumb,
                       label=f"{ex.title}: generator {ex.generator}, {ex.settings_dict().get('steps', '?')} steps"))
    return 0


COMMANDS = {
    "demo": cmd_demo, "display": cmd_display, "worker": cmd_worker, "web": cmd_web, "render": cmd_render,
    "exhibits": cmd_exhibits, "status": cmd_status, "models": cmd_models, "fetch-models": cmd_fetch_models,
    "doctor": cmd_doctor, "backup": cmd_backup, "restore": cmd_restore,
    "export": cmd_export,
    "contact-sheet": cmd_contact_sheet,
    "continue": cmd_continue,
    "staff-password": cmd_staff_password,
    "suffix-sheet": cmd_suffix_sheet,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    _setup_logging(args.verbose)
    if args.command == "staff-password" and args.config is not None and not args.config.exists():
        args.config.touch(mode=0o600)  # a first kiosk.toml holding only the password hash
    try:
        cfg = show_config(args)
        return COMMANDS[args.command](args, cfg)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except (ValueError, RuntimeError, OSError) as exc:
        # Our errors carry a message meant for people (which file, which key, what to run).
        log.debug("details", exc_info=True)
        print(f"error: {exc}", file=sys.stderr)
        return 1
