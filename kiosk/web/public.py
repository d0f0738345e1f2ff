"""Visitor pages: recent pieces, one piece with its downloads, the prompt form and a job's status."""
from __future__ import annotations

import hashlib
import logging
import random
import re
import secrets
import threading
from pathlib import Path
from typing import Any, Mapping

from flask import (Blueprint, Response, abort, current_app, g, jsonify, redirect, render_template, request,
                   send_file, url_for)

from exhibits.config import Exhibit
from exhibits.prompts import MAX_VISITOR_CHARS, PromptError, clean_visitor_text
from exhibits.show import piece_url
from exhibits.store import Job, Piece, StoreError
from kiosk.web import get_store, id_arg, json_body, state, visitor_exhibit_names, wants_json
from kiosk.web.exports import EXPORTS

log = logging.getLogger(__name__)
bp = Blueprint("public", __name__)

VISITOR_COOKIE = "kiosk_visitor"
_VISITOR_RE = re.compile(r"^[A-Za-z0-9_-]{16,32}$")
FINISHED = ("done", "failed", "cancelled")

MAX_REALM_CHARS = 40
MOODS = ((20, "calm"), (40, "gentle"), (60, "restless"), (80, "strange"), (101, "wild"))


# -- helpers ------------------------------------------------------------------
def is_staff() -> bool:
    from kiosk.web.staff import is_staff as staff_session

    return staff_session()


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
          max_age: int = 86400, inline_name: str | None = None) -> Response:
    store = get_store()
    try:
        path = store.path(rel)
    except StoreError:
        abort(404)
    if not path.is_file():
        abort(404, description="the image file is missing from the archive")
    resp = send_file(path, mimetype=mimetype, as_attachment=attachment is not None,
                     download_name=attachment or inline_name, etag=etag or file_etag(path), conditional=True,
                     max_age=max_age)
    resp.headers["Cache-Control"] = f"public, max-age={max_age}"
    return resp


def visitor_id() -> str:
    """The phone's anonymous id (a random cookie), made once per request when it has none yet."""
    if "visitor_id" not in g:
        vid = request.cookies.get(VISITOR_COOKIE, "")
        g.visitor_id = vid if _VISITOR_RE.match(vid) else secrets.token_urlsafe(16)
    return g.visitor_id


def _minutes(seconds: float) -> str:
    if seconds < 60:
        return "less than a minute"
    m = int(seconds / 60 + 0.5)
    return "about a minute" if m <= 1 else f"about {m} minutes"


def wait_estimate(job: Job) -> float | None:
    """Seconds until ``job`` is finished, from the measured render times of recent pieces (None: unknown)."""
    store = get_store()
    medians: dict[str, float | None] = {}

    def median(exhibit: str) -> float | None:
        if exhibit not in medians:
            medians[exhibit] = store.render_seconds(exhibit)
        return medians[exhibit]

    if job.status == "running":
        m = median(job.exhibit)
        return None if m is None else m * (1 - job.step / job.total if job.total else 0.5)
    if job.status != "queued":
        return None
    total = 0.0
    for exhibit, step, steps in store.queue_ahead(job.id):
        m = median(exhibit)
        if m is None:
            return None
        total += m * (1 - step / steps if steps else 1.0)
    own = median(job.exhibit)
    return None if own is None else total + own


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
    wait = wait_estimate(job)
    data["wait_seconds"] = None if wait is None else round(wait, 1)
    data["wait_text"] = None if wait is None else f"Ready in {_minutes(wait)}."
    data["message"] = status_message(job, data["position"])
    live = job.status == "running" and job.frame_path
    # the step in the query string makes each new frame a new URL for the phone's <img>
    data["frame_url"] = url_for("public.job_frame", token=job.token, step=job.step) if live else None
    return data


def status_message(job: Job, position: int | None) -> str:
    if job.held_for_staff:
        return job.public_error() or ""
    if job.status == "held":
        return ("Your prompt is waiting for a member of staff to look at it before it goes on the screen. "
                "Nothing is lost: keep this page open.")
    if job.status == "queued":
        return "Next in line." if position == 1 else f"Waiting: number {position} in the queue."
    if job.status == "running":
        steps = f" (step {job.step} of {job.total})" if job.total else ""
        return f"On screen now: the machine is making your piece{steps}."
    if job.status == "done":
        return "Done! Your piece is ready."
    if job.status == "failed":
        return f"Sorry, {job.public_error()}."
    return "This prompt was cancelled by the staff."


def now_making() -> dict[str, Any] | None:
    job = get_store().current_progress()
    if job is None:
        return None
    return {"prompt": job.prompt_text, "exhibit": job.exhibit, "step": job.step, "total": job.total,
            "frame": job.frame_path is not None}


def my_jobs(limit: int = 30) -> list[Job]:
    """This phone's prompts (by its visitor cookie), newest first; none without the cookie."""
    vid = request.cookies.get(VISITOR_COOKIE, "")
    return get_store().visitor_jobs(vid, limit) if _VISITOR_RE.match(vid) else []


def _image_present(p: Piece) -> bool:
    try:
        return get_store().path(p.image_path).is_file()
    except StoreError:
        return False


# -- pages --------------------------------------------------------------------
@bp.get("/")
def index() -> str:
    store = get_store()
    size = current_app.config["KIOSK_PAGE_SIZE"]
    before = id_arg("before")
    pieces = store.recent_pieces(size, before_id=before)
    older = pieces[-1].id if len(pieces) == size else None
    mine_on_screen = next((j for j in my_jobs(10) if j.status == "running"), None)
    return render_template("home.html", pieces=pieces, older=older, now=now_making(),
                           queued=store.count_queued(), mine_on_screen=mine_on_screen)


@bp.get("/mine")
def mine() -> str:
    jobs = my_jobs()
    return render_template("mine.html", jobs=jobs, infos={j.id: job_payload(j) for j in jobs})


@bp.get("/p/<id:piece_id>")
def piece(piece_id: int) -> str:
    p = _piece_or_404(piece_id)
    return render_template("piece.html", piece=p, url=piece_url(state().cfg, p.id),
                           filename=download_name(p), present=_image_present(p), moving=moving_files(p))


@bp.get("/p/<id:piece_id>.json")
@bp.get("/api/piece/<id:piece_id>")
def piece_json(piece_id: int) -> Response:
    p = _piece_or_404(piece_id)
    return jsonify(p.public())


@bp.get("/p/<id:piece_id>/image.png")
def image(piece_id: int) -> Response:
    p = _piece_or_404(piece_id)
    return _send(p.image_path, etag=p.sha256, mimetype="image/png")


@bp.get("/p/<id:piece_id>/download.png")
def download(piece_id: int) -> Response:
    p = _piece_or_404(piece_id)
    return _send(p.image_path, etag=p.sha256, mimetype="image/png", attachment=download_name(p))


# A piece's moving versions and drawings (renderer extra files), by the key the renderer gave them.
MOVING_FILES = {
    "timelapse": "How it was made", "animation": "Latent loop", "interpolation": "Interpolation",
    "timelapse_gif": "How it was made", "animation_gif": "Latent loop", "interpolation_gif": "Interpolation",
    "drawing": "Drawing",
}  # the page adds the format: "How it was made (MP4)", "How it was made (GIF)"
_MIMETYPES = {".mp4": "video/mp4", ".gif": "image/gif", ".svg": "image/svg+xml"}


def moving_files(p: Piece) -> list[tuple[str, str, str]]:
    """(key, title, suffix) of the piece's extra files that visitors may download, in a fixed order."""
    return [(k, title, Path(p.extra[k]).suffix.lstrip(".")) for k, title in MOVING_FILES.items()
            if k in (p.extra or {}) and Path(p.extra[k]).suffix in _MIMETYPES]


@bp.get("/p/<id:piece_id>/<key>.<ext>")
def moving_file(piece_id: int, key: str, ext: str) -> Response:
    p = _piece_or_404(piece_id)
    rel = (p.extra or {}).get(key) if key in MOVING_FILES else None
    if not rel or Path(rel).suffix != f".{ext}" or f".{ext}" not in _MIMETYPES:
        abort(404, description="this piece has no such file")
    return _send(rel, mimetype=_MIMETYPES[f".{ext}"], attachment=download_name(p, f"{key}.{ext}"))


@bp.get("/p/<id:piece_id>/thumb.jpg")
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


# -- exports: made by the export queue, served as plain files ------------------------------
@bp.get("/p/<id:piece_id>/print.pdf")
def print_file(piece_id: int) -> Any:
    return _export_response(_piece_or_404(piece_id), "print")


@bp.get("/p/<id:piece_id>/ar.zip")
def ar_pack(piece_id: int) -> Any:
    return _export_response(_piece_or_404(piece_id), "ar")


@bp.get("/p/<id:piece_id>/model.glb")
def glb_model(piece_id: int) -> Any:
    """The piece as a framed 20 cm picture (glTF binary) for model-viewer and Android's Scene Viewer."""
    return _export_response(_piece_or_404(piece_id), "glb", inline=True)


@bp.get("/p/<id:piece_id>/model.usdz")
def usdz_model(piece_id: int) -> Any:
    """The same framed picture as USDZ for iOS Quick Look."""
    return _export_response(_piece_or_404(piece_id), "usdz", inline=True)


@bp.get("/p/<id:piece_id>/ar")
def ar_view(piece_id: int) -> Any:
    """The piece as a framed 20 cm picture: model-viewer in the page, Scene Viewer / Quick Look on the wall.

    Both models are made by the export queue first; until they are ready this answers with the
    "being prepared" page, which comes back here by itself.
    """
    p = _piece_or_404(piece_id)
    for kind in ("glb", "usdz"):
        status, _ = _export_state(p, kind)
        if status != "ready":
            return _export_response(p, kind, come_back=url_for("public.ar_view", piece_id=p.id))
    vendor = Path(current_app.config["KIOSK_VENDOR_DIR"])
    viewer_ok = (vendor / VENDOR_FILES["model-viewer.min.js"]).is_file()
    html = render_template("ar.html", piece=p, viewer_ok=viewer_ok,
                           glb=url_for("public.glb_model", piece_id=p.id),
                           usdz=url_for("public.usdz_model", piece_id=p.id))
    resp = current_app.make_response(html)
    resp.headers["Content-Security-Policy"] = AR_CSP
    return resp


@bp.get("/vendor/<name>")
def vendor_file(name: str) -> Any:
    """Browser parts installed from npm into vendor/node_modules at set-up (never a CDN at run time)."""
    rel = VENDOR_FILES.get(name)
    if rel is None:
        abort(404)
    path = Path(current_app.config["KIOSK_VENDOR_DIR"]) / rel
    if not path.is_file():
        abort(404, description=f"{name} is not installed on this machine: run scripts/demo.sh "
                               f"(it runs npm ci --prefix vendor)")
    resp = send_file(path, mimetype="text/javascript", etag=file_etag(path), conditional=True, max_age=86400)
    resp.headers["Cache-Control"] = "public, max-age=86400"
    return resp


_EXPORT_ENDPOINTS = {"print": "public.print_file", "ar": "public.ar_pack", "glb": "public.glb_model",
                     "usdz": "public.usdz_model"}
_EXPORT_WHAT = {"print": "print file", "ar": "AR packs", "glb": "3D model", "usdz": "3D model for iPhone"}
MODEL_TYPES = {"glb": "model/gltf-binary", "usdz": "model/vnd.usdz+zip"}
VENDOR_FILES = {"model-viewer.min.js": "@google/model-viewer/dist/model-viewer.min.js"}
# model-viewer (three.js) turns the GLB's embedded texture into a blob: URL, decodes it off the main thread and
# compiles a WebAssembly helper (wasm only: 'wasm-unsafe-eval' does not allow eval)
AR_CSP = ("default-src 'self'; img-src 'self' data: blob:; connect-src 'self' data: blob:; worker-src 'self' blob:; "
          "style-src 'self' 'unsafe-inline'; script-src 'self' 'wasm-unsafe-eval'; frame-ancestors 'none'")


@bp.get("/api/piece/<id:piece_id>/export/<kind>")
def export_status(piece_id: int, kind: str) -> Response:
    """What the "being prepared" page polls: preparing, ready (with the file's URL) or failed."""
    p = _piece_or_404(piece_id)
    if kind not in EXPORTS:
        abort(404, description=f"there is no export called {kind[:20]!r}; one of {', '.join(EXPORTS)}")
    status, _ = _export_state(p, kind)
    resp = jsonify({"piece": p.id, "kind": kind, "status": status, "url": _export_url(p, kind)})
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _export_url(p: Piece, kind: str) -> str:
    return url_for(_EXPORT_ENDPOINTS[kind], piece_id=p.id)


def _export_state(p: Piece, kind: str) -> tuple[str, dict | None]:
    """("ready", row) | ("preparing", row) | ("failed", row) | ("missing", None); asks for it when needed."""
    if not _image_present(p):
        return "missing", None
    store = get_store()
    row = store.export_row(p.id, kind)
    if row is not None and row["status"] == "ready":
        try:
            if row["path"] and store.path(row["path"]).is_file():
                return "ready", row
        except StoreError:
            pass
        store.forget_export(p.id, kind)  # pruned or removed under us: make it again
        row = None
    if row is None or row["status"] == "failed":
        row = store.request_export(p.id, kind)
    if row["status"] == "failed":
        return "failed", row
    state().exports.wake()
    return "preparing", row


def _export_response(p: Piece, kind: str, *, inline: bool = False, come_back: str | None = None) -> Any:
    """The export's file (``inline`` for AR viewers, else as a download), or "being prepared" (202) that
    goes on to ``come_back`` (default: the file) when it is ready."""
    status, row = _export_state(p, kind)
    _, _, name = EXPORTS[kind]
    what = _EXPORT_WHAT[kind]
    if status == "missing":
        abort(404, description="the image file of this piece is missing from the archive, so there is no "
                               f"{what} to make")
    if status == "failed":
        abort(503, description=f"the {what} of this piece could not be made; the staff can see why in the log")
    if status == "preparing":
        if wants_json():
            resp = jsonify({"status": "preparing", "retry_after": 2, "url": _export_url(p, kind),
                            "message": f"The {what} is being prepared."})
        else:
            resp = current_app.make_response(render_template(
                "preparing.html", piece=p, what=what, kind=kind, url=come_back or _export_url(p, kind),
                api=url_for("public.export_status", piece_id=p.id, kind=kind)))
        resp.status_code = 202
        resp.headers["Retry-After"] = "2"
        resp.headers["Cache-Control"] = "no-store"
        return resp
    assert row is not None
    get_store().touch_export(p.id, kind)
    filename = f"{slug(p.series or p.exhibit)}-{p.id}-{name}"
    if inline:  # AR viewers open it in place (Quick Look, Scene Viewer); a save keeps the name
        return _send(row["path"], etag=row["sha256"], mimetype=MODEL_TYPES.get(kind), inline_name=filename)
    return _send(row["path"], etag=row["sha256"], attachment=filename)


# -- prompts ------------------------------------------------------------------------------
def offered_exhibits() -> list[str]:
    """The visitor's choices, less those the worker reported it cannot run (missing weights)."""
    names = visitor_exhibit_names(state().cfg)
    available = get_store().get_setting("exhibits_available") or {}
    return [n for n in names if available.get(n, "ok") == "ok"]


def _exhibit_choices() -> list[Exhibit]:
    st = state()
    return [st.exhibits[n] for n in offered_exhibits()]


def mood_label(mood: int) -> str:
    return next(label for upper, label in MOODS if mood < upper)


def _form_page(error: str | None = None, values: Mapping[str, Any] | None = None, code: int = 200) -> Any:
    values = values or {}
    choices = _exhibit_choices()
    selected = values.get("exhibit") or (choices[0].name if choices else "")
    return render_template("submit.html", choices=choices, text=values.get("prompt") or "", error=error,
                           selected=selected, values=values, max_chars=MAX_VISITOR_CHARS,
                           max_realm=MAX_REALM_CHARS, moods=MOODS), code


@bp.get("/submit")
def submit_form() -> Any:
    return _form_page()


def _field(data: Mapping[str, Any], key: str) -> str:
    v = data.get(key)
    if v is None:
        return ""
    if not isinstance(v, str):
        raise PromptError(f"{key} must be text")
    return v


def _create_job(data: Mapping[str, Any]) -> tuple[Job | None, str | None]:
    """Validate and queue a visitor's prompt; returns (job, None) or (None, reason).

    ``data``: prompt (free text), exhibit, and for template exhibits (Doorways) realm_left / realm_right
    or pair (an index into the exhibit's realm pairs), for sigma exhibits mood (0 calm .. 100 wild).
    """
    from exhibits.playlist import spec_for

    st = state()
    allowed = offered_exhibits()
    if not allowed:
        return None, "the renderer cannot make any of this show's exhibits right now; ask the staff"
    name = data.get("exhibit") or allowed[0]
    if not isinstance(name, str) or name not in allowed:
        return None, f"unknown exhibit {str(name)[:40]!r}; choose one of {', '.join(allowed)}"
    ex = st.exhibits[name]
    rng = random.SystemRandom()
    try:
        text = _field(data, "prompt")
        pair, left, right, mood_raw = (_field(data, k).strip() for k in ("pair", "realm_left", "realm_right", "mood"))
        realms: tuple[str, ...] = ()
        if ex.template and pair:
            sets = ex.all_sets()
            if not pair.isascii() or not pair.isdigit() or not 0 <= int(pair) < len(sets):
                raise PromptError(f"pair must be one of the listed realm pairs (0 to {len(sets) - 1})")
            realms = sets[int(pair)][1]
        elif ex.template and (left or right):
            realms = tuple(clean_visitor_text(v, max_chars=MAX_REALM_CHARS, what=w) for v, w in
                           ((left, "the first realm"), (right, "the second realm")) if v)
            if any("|" in r or ":" in r for r in realms):
                raise PromptError("a realm name cannot contain '|' or ':'; write just the realm, like 'Ocean'")
        mood = None
        if ex.sigma is not None and mood_raw:
            if not mood_raw.isascii() or not mood_raw.isdigit() or not 0 <= int(mood_raw) <= 100:
                raise PromptError("mood must be a whole number from 0 (calm) to 100 (wild)")
            mood = int(mood_raw)
        if realms:
            spec = spec_for(ex, rng, realms=realms)
            check_text = " ".join(realms)
        elif text.strip() or mood is None:
            clean = clean_visitor_text(text)
            spec = spec_for(ex, rng, text=clean)
            check_text = clean
        else:
            spec = spec_for(ex, rng)
            spec = type(spec)(spec.exhibit, spec.prompts, f"Mood: {mood_label(mood)}", spec.seed, spec.params)
            check_text = ""
    except PromptError as exc:
        return None, str(exc)
    params = dict(spec.params)
    if mood is not None and ex.sigma is not None:
        lo, hi = ex.sigma
        params["sigma"] = round(lo + (hi - lo) * mood / 100, 4)
        params["mood"] = mood
    verdict = st.moderator.check(check_text) if check_text else None
    flagged = bool(verdict and verdict.held)
    job = get_store().submit(spec.exhibit, prompts=spec.prompts, prompt_text=spec.prompt_text, seed=spec.seed,
                             params=params, source="visitor", held=st.cfg.moderate_prompts or flagged,
                             visitor=visitor_id(), held_reason=verdict.reason if flagged else None)
    if flagged:
        log.info("job %d held for the staff: %s", job.id, verdict.reason)
    return job, None


def _with_visitor_cookie(resp: Response) -> Response:
    if not _VISITOR_RE.match(request.cookies.get(VISITOR_COOKIE, "")):
        resp.set_cookie(VISITOR_COOKIE, visitor_id(), max_age=365 * 86400, httponly=True, samesite="Lax")
    return resp


@bp.post("/submit")
def submit() -> Any:
    job, error = _create_job(request.form)
    if error is not None:
        if wants_json():
            return jsonify({"error": error, "field": "exhibit" if "exhibit" in error else "prompt"}), 400
        return _form_page(error, request.form, 400)
    assert job is not None
    if wants_json():
        resp = jsonify(job_payload(job) | {"status_url": url_for("public.job", token=job.token)})
        resp.status_code = 201
    else:
        resp = redirect(url_for("public.job", token=job.token), code=303)
    return _with_visitor_cookie(resp)


@bp.post("/api/submit")
def api_submit() -> Any:
    """JSON ``{"prompt": ..., "exhibit": ...}`` with the CSRF token in the X-CSRFToken header (from
    GET /api/session), or the same fields as a form."""
    data: Mapping[str, Any] = json_body() if request.is_json else request.form
    job, error = _create_job(data)
    if error is not None:
        return jsonify({"error": error}), 400
    assert job is not None
    resp = jsonify(job_payload(job) | {"status_url": url_for("public.job", token=job.token)})
    resp.status_code = 201
    return _with_visitor_cookie(resp)


@bp.get("/api/session")
def api_session() -> Response:
    """The CSRF token a script sends back in the X-CSRFToken header of its POSTs."""
    from kiosk.web import csrf_token

    resp = jsonify({"csrf_token": csrf_token()})
    resp.headers["Cache-Control"] = "no-store"
    return resp


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
    """ok only when the store can be read and written and passes PRAGMA quick_check; else 503 with the reason."""
    from kiosk.web import health_report

    body, ok = health_report(get_store(), state().health)
    resp = jsonify(body)
    resp.status_code = 200 if ok else 503
    resp.headers["Cache-Control"] = "no-store"
    return resp
