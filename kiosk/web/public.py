"""Visitor pages: recent pieces, one piece with its downloads, the prompt form and a job's status."""
from __future__ import annotations

import hashlib
import logging
import random
import re
import secrets
import sqlite3
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

from flask import (Blueprint, Response, abort, current_app, g, jsonify, redirect, render_template, request,
                   send_file, session, url_for)

from exhibits.prompts import MAX_VISITOR_CHARS, PromptError, clean_visitor_text
from exhibits.show import piece_url
from exhibits.store import Job, Piece, StoreError
from kiosk.web import get_store, state, visitor_exhibit_names, wants_json

log = logging.getLogger(__name__)
bp = Blueprint("public", __name__)

VISITOR_COOKIE = "kiosk_visitor"
_VISITOR_RE = re.compile(r"^[A-Za-z0-9_-]{16,32}$")
FINISHED = ("done", "failed", "cancelled")

# export kind -> (exporter names to try, file suffix served, download suffix)
EXPORTS = {
    "print": (("print",), ".pdf", "print-20cm.pdf"),
    "ar": (("ar_bundle", "bundle", "ar"), ".zip", "ar-filter.zip"),
}


class ExportUnavailable(RuntimeError):
    """The exporter cannot run here (the filters package or the exporter is missing)."""


# -- helpers ------------------------------------------------------------------
def is_staff() -> bool:
    return bool(session.get("staff"))


def _piece_or_404(piece_id: int) -> Piece:
    piece = get_store().get_piece(piece_id, include_hidden=is_staff())
    if piece is None:
        abort(404, description=f"there is no piece number {piece_id}")
    return piece


def slug(text: str, fallback: str = "piece") -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40].strip("-")
    return s or fallback


def download_name(piece: Piece, suffix: str = "png") -> str:
    return f"{slug(piece.series or piece.exhibit)}-{piece.id}-seed{piece.seed}.{suffix}"


_etags: dict[tuple[str, int, int], str] = {}
_etag_lock = threading.Lock()


def file_etag(path: Path) -> str:
    """sha256 of a file, remembered while its size and mtime stay the same."""
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    with _etag_lock:
        tag = _etags.get(key)
    if tag is None:
        tag = hashlib.sha256(path.read_bytes()).hexdigest()
        with _etag_lock:
            if len(_etags) > 4096:
                _etags.clear()
            _etags[key] = tag
    return tag


def _send(rel: str, *, etag: str | None = None, mimetype: str | None = None, attachment: str | None = None,
          max_age: int = 86400) -> Response:
    store = get_store()
    try:
        path = store.path(rel)
    except StoreError:
        abort(404)
    if not path.is_file():
        abort(404, description="the image file is missing from the archive")
    resp = send_file(path, mimetype=mimetype, as_attachment=attachment is not None, download_name=attachment,
                     etag=etag or file_etag(path), conditional=True, max_age=max_age)
    resp.headers["Cache-Control"] = f"public, max-age={max_age}"
    return resp


def visitor_id() -> str:
    """The phone's anonymous id (a random cookie), made once per request when it has none yet."""
    if "visitor_id" not in g:
        vid = request.cookies.get(VISITOR_COOKIE, "")
        g.visitor_id = vid if _VISITOR_RE.match(vid) else secrets.token_urlsafe(16)
    return g.visitor_id


def job_payload(job: Job) -> dict[str, Any]:
    store = get_store()
    data = job.public()
    data["token"] = job.token
    data["position"] = store.queue_position(job.id) if job.status == "queued" else None
    data["on_screen"] = job.status == "running"
    data["finished"] = job.status in FINISHED
    data["piece_url"] = url_for("public.piece", piece_id=job.piece_id) if job.piece_id else None
    data["thumb_url"] = url_for("public.thumb", piece_id=job.piece_id) if job.piece_id else None
    data["percent"] = int(100 * job.step / job.total) if job.total else (100 if job.status == "done" else 0)
    data["message"] = status_message(job, data["position"])
    live = job.status == "running" and job.frame_path
    # the step in the query string makes each new frame a new URL for the phone's <img>
    data["frame_url"] = url_for("public.job_frame", token=job.token, step=job.step) if live else None
    return data


def status_message(job: Job, position: int | None) -> str:
    if job.status == "held":
        return "Waiting for the staff to approve your prompt."
    if job.status == "queued":
        return "Next in line." if position == 1 else f"Waiting: number {position} in the queue."
    if job.status == "running":
        steps = f" (step {job.step} of {job.total})" if job.total else ""
        return f"On screen now: the machine is making your piece{steps}."
    if job.status == "done":
        return "Done! Your piece is ready."
    if job.status == "failed":
        return f"Sorry, this one failed: {job.error or 'unknown error'}."
    return "This prompt was cancelled by the staff."


def now_making() -> dict[str, Any] | None:
    job = get_store().current_progress()
    if job is None:
        return None
    return {"prompt": job.prompt_text, "exhibit": job.exhibit, "step": job.step, "total": job.total,
            "frame": job.frame_path is not None}


# -- pages --------------------------------------------------------------------
@bp.get("/")
def index() -> str:
    store = get_store()
    size = current_app.config["KIOSK_PAGE_SIZE"]
    before = request.args.get("before", type=int)
    pieces = store.recent_pieces(size, before_id=before)
    older = pieces[-1].id if len(pieces) == size else None
    return render_template("home.html", pieces=pieces, older=older, now=now_making(),
                           queued=store.count_queued())


@bp.get("/p/<int:piece_id>")
def piece(piece_id: int) -> str:
    p = _piece_or_404(piece_id)
    return render_template("piece.html", piece=p, url=piece_url(state().cfg, p.id),
                           filename=download_name(p))


@bp.get("/p/<int:piece_id>.json")
@bp.get("/api/piece/<int:piece_id>")
def piece_json(piece_id: int) -> Response:
    p = _piece_or_404(piece_id)
    return jsonify(p.public())


@bp.get("/p/<int:piece_id>/image.png")
def image(piece_id: int) -> Response:
    p = _piece_or_404(piece_id)
    return _send(p.image_path, etag=p.sha256, mimetype="image/png")


@bp.get("/p/<int:piece_id>/download.png")
def download(piece_id: int) -> Response:
    p = _piece_or_404(piece_id)
    return _send(p.image_path, etag=p.sha256, mimetype="image/png", attachment=download_name(p))


@bp.get("/p/<int:piece_id>/thumb.jpg")
def thumb(piece_id: int) -> Response:
    p = _piece_or_404(piece_id)
    if not p.thumb_path:
        return _send(p.image_path, etag=p.sha256, mimetype="image/png")
    return _send(p.thumb_path, mimetype="image/jpeg")


@bp.get("/now.jpg")
def now_frame() -> Response:
    job = get_store().current_progress()
    if job is None or not job.frame_path:
        abort(404, description="nothing is being made right now")
    resp = _send(job.frame_path, mimetype="image/jpeg", max_age=0)
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.get("/p/<int:piece_id>/print.pdf")
def print_file(piece_id: int) -> Response:
    return _export_response(_piece_or_404(piece_id), "print")


@bp.get("/p/<int:piece_id>/ar.zip")
def ar_pack(piece_id: int) -> Response:
    return _export_response(_piece_or_404(piece_id), "ar")


def _export_response(p: Piece, kind: str) -> Response:
    try:
        path = _export(p, kind)
    except ExportUnavailable as exc:
        abort(503, description=str(exc))
    _, _, name = EXPORTS[kind]
    rel = str(path.relative_to(get_store().root))
    return _send(rel, attachment=f"{slug(p.series or p.exhibit)}-{p.id}-{name}")


def _export(piece: Piece, kind: str) -> Path:
    """The file of export ``kind`` for ``piece``, made once by the filters package and cached in the store.

    Cached under ``<store>/exports/<piece_id>/<kind>/``. Raises :class:`ExportUnavailable` when the
    filters package or the exporter cannot be loaded.
    """
    names, suffix, _ = EXPORTS[kind]
    st = state()
    store = get_store()
    out_dir = store.path(f"exports/{piece.id}/{kind}")
    with st.lock:
        lock = st.export_locks.setdefault((piece.id, kind), threading.Lock())
    with lock:
        cached = sorted(out_dir.glob(f"*{suffix}")) if out_dir.is_dir() else []
        if cached:
            return cached[0]
        try:
            from filters import registry
            known = registry.names()
        except ImportError as exc:
            raise ExportUnavailable(
                f"{kind} files are not available on this installation yet (the exporters could not be loaded: {exc})"
            ) from exc
        name = next((n for n in names if n in known), None)
        if name is None:
            raise ExportUnavailable(f"no {kind} exporter is installed (looked for {', '.join(names)};"
                                    f" installed: {', '.join(known) or 'none'})")
        opts = _export_options(kind, registry.exporter_options(name))
        meta = {**piece.public(), "piece_id": piece.id, "prompts": [list(x) for x in piece.prompts],
                "params": piece.params, "models": piece.models, "url": piece_url(st.cfg, piece.id)}
        try:
            files = registry.export(name, store.path(piece.image_path), meta, out_dir,
                                    basename=f"piece-{piece.id}", **opts)
        except registry.ExportError as exc:
            log.error("export %s of piece %d failed: %s", name, piece.id, exc)
            raise ExportUnavailable(f"the {kind} file could not be made: {exc}") from exc
        chosen = sorted((f for f in files if f.suffix == suffix), key=lambda f: (name not in f.stem, f.name))
        if chosen:
            for extra in files:
                if extra != chosen[0]:
                    extra.unlink(missing_ok=True)  # the cache holds exactly the file that is served
            return chosen[0]
        if not files:
            raise ExportUnavailable(f"the {name} exporter wrote no files")
        return _zip_files(files, out_dir / f"piece-{piece.id}-{kind}{suffix}")


AR_FORMATS = ("sparkar", "lensstudio", "effecthouse", "glb")


def _export_options(kind: str, accepted: dict[str, Any]) -> dict[str, Any]:
    """Options for the exporter: a 20 x 20 cm print; one AR pack holding every AR format."""
    opts: dict[str, Any] = {}
    if kind == "print":
        if "size_cm" in accepted:
            opts["size_cm"] = 20.0
        elif "width_cm" in accepted and "height_cm" in accepted:
            opts.update(width_cm=20.0, height_cm=20.0)
    if kind == "ar":
        if "keep_parts" in accepted:
            opts["keep_parts"] = False
        if "formats" in accepted and isinstance(accepted["formats"], (tuple, list)):
            ar = tuple(f for f in accepted["formats"] if f in AR_FORMATS)
            if ar:
                opts["formats"] = ar
    return opts


def _zip_files(files: list[Path], dest: Path) -> Path:
    from exhibits.files import atomic_path

    with atomic_path(dest) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for f in files:
                zf.write(f, f.relative_to(dest.parent))
    return dest


def offered_exhibits() -> list[str]:
    """The visitor's choices, less those the worker reported it cannot run (missing weights)."""
    names = visitor_exhibit_names(state().cfg)
    available = get_store().get_setting("exhibits_available") or {}
    return [n for n in names if available.get(n, "ok") == "ok"]


def _exhibit_choices() -> list[tuple[str, str]]:
    st = state()
    return [(n, st.exhibits[n].title) for n in offered_exhibits()]


@bp.get("/submit")
def submit_form() -> str:
    return render_template("submit.html", choices=_exhibit_choices(), text="", error=None,
                           selected=(offered_exhibits() or [""])[0], max_chars=MAX_VISITOR_CHARS)


def _create_job(text: Any, exhibit_name: Any) -> tuple[Job | None, str | None]:
    """Validate and queue a visitor's prompt; returns (job, None) or (None, reason)."""
    from exhibits.playlist import spec_for

    st = state()
    allowed = offered_exhibits()
    if not allowed:
        return None, "the renderer cannot make any of this show's exhibits right now; ask the staff"
    name = exhibit_name or allowed[0]
    if not isinstance(name, str) or name not in allowed:
        return None, f"unknown exhibit {str(name)[:40]!r}; choose one of {', '.join(allowed)}"
    try:
        clean = clean_visitor_text(text)
        spec = spec_for(st.exhibits[name], random.SystemRandom(), text=clean)
    except PromptError as exc:
        return None, str(exc)
    job = get_store().submit(spec.exhibit, prompts=spec.prompts, prompt_text=spec.prompt_text, seed=spec.seed,
                             params=spec.params, source="visitor", held=st.cfg.moderate_prompts,
                             visitor=visitor_id())
    return job, None


def _with_visitor_cookie(resp: Response) -> Response:
    if not _VISITOR_RE.match(request.cookies.get(VISITOR_COOKIE, "")):
        resp.set_cookie(VISITOR_COOKIE, visitor_id(), max_age=365 * 86400, httponly=True, samesite="Lax")
    return resp


@bp.post("/submit")
def submit() -> Any:
    text = request.form.get("prompt")
    exhibit_name = request.form.get("exhibit")
    job, error = _create_job(text, exhibit_name)
    if error is not None:
        if wants_json():
            return jsonify({"error": error, "field": "prompt" if "exhibit" not in error else "exhibit"}), 400
        return render_template("submit.html", choices=_exhibit_choices(), text=text or "", error=error,
                               selected=exhibit_name, max_chars=MAX_VISITOR_CHARS), 400
    assert job is not None
    if wants_json():
        resp = jsonify(job_payload(job) | {"status_url": url_for("public.job", token=job.token)})
        resp.status_code = 201
    else:
        resp = redirect(url_for("public.job", token=job.token), code=303)
    return _with_visitor_cookie(resp)


@bp.post("/api/submit")
def api_submit() -> Any:
    data = request.get_json(silent=True) if request.is_json else None
    if data is None:
        data = request.form
    if not hasattr(data, "get"):
        return jsonify({"error": "send a JSON object like {\"prompt\": \"...\"}"}), 400
    job, error = _create_job(data.get("prompt"), data.get("exhibit"))
    if error is not None:
        return jsonify({"error": error}), 400
    assert job is not None
    resp = jsonify(job_payload(job) | {"status_url": url_for("public.job", token=job.token)})
    resp.status_code = 201
    return _with_visitor_cookie(resp)


def _job_or_404(token: str) -> Job:
    job = get_store().job_by_token(token) if len(token) <= 64 else None
    if job is None:
        abort(404, description="there is no prompt with this link")
    return job


@bp.get("/job/<token>")
def job(token: str) -> str:
    j = _job_or_404(token)
    return render_template("job.html", job=j, info=job_payload(j),
                           poll_ms=current_app.config["KIOSK_POLL_MS"])


@bp.get("/job/<token>/frame.jpg")
def job_frame(token: str) -> Response:
    """The newest progress frame of this visitor's job: the piece being made, live on the phone."""
    j = _job_or_404(token)
    if j.status != "running" or not j.frame_path:
        abort(404, description="this piece is not being made right now")
    resp = _send(j.frame_path, mimetype="image/jpeg", max_age=0)
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.get("/api/job/<token>")
def api_job(token: str) -> Response:
    resp = jsonify(job_payload(_job_or_404(token)))
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.get("/healthz")
def healthz() -> Any:
    try:
        store = get_store()
        workers = store.workers_alive()
        body = {"ok": True, "store": True, "workers_alive": len(workers),
                "workers": [{"id": w["id"], "state": w["state"], "device": w["device"]} for w in workers],
                "queue": store.count_queued(), "running": len(store.running()),
                "pieces": store.count_pieces(), "time": time.time()}
        return jsonify(body)
    except (StoreError, OSError, sqlite3.Error) as exc:
        log.error("health check failed: %s", exc)
        return jsonify({"ok": False, "store": False, "error": str(exc)}), 503
