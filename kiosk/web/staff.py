"""Staff pages: the queue (approve, cancel, retry), pieces (hide, unhide), curation, workers.

Staff log in with the password whose salted hash ``python -m kiosk staff-password`` keeps in
kiosk.toml. With no password the pages stay closed, unless the operator sets
``staff_local_only = true``: then they answer requests from this machine (127.0.0.1) only, and
never when a reverse proxy is configured (behind a proxy every visitor arrives from loopback).
"""
from __future__ import annotations

import hmac
import logging
import time
from typing import Any, Callable

from flask import Blueprint, abort, current_app, redirect, render_template, request, session, url_for

from kiosk.web import get_store, id_arg, state

log = logging.getLogger(__name__)
bp = Blueprint("staff", __name__, url_prefix="/staff")

LOCAL_ADDRS = ("127.0.0.1", "::1")
CURATION_FILTERS = ("unreviewed", "keep", "reject", "all")
JOB_ACTIONS = ("approve", "cancel", "retry")
PIECE_ACTIONS = ("hide", "unhide", "keep", "reject", "clear")
CLOSED = ("The staff pages are closed: no staff password is set. On the exhibit machine run "
          "`python -m kiosk staff-password --config kiosk.toml`, or set staff_local_only = true to use "
          "them from this machine only.")


def password_set() -> bool:
    return state().passwords.is_set()


def local_only() -> bool:
    """Loopback access without a password: only when the operator asked for it and no proxy is configured."""
    cfg = state().cfg
    return cfg.staff_local_only and not cfg.trusted_proxies and not password_set()


def is_local() -> bool:
    peer = request.environ.get("kiosk.peer", request.remote_addr)
    return peer in LOCAL_ADDRS and not state().cfg.trusted_proxies


def _fingerprint() -> str:
    return state().passwords.fingerprint(current_app.secret_key or "")


def is_staff() -> bool:
    """A valid staff session (made under the current password, in this archive, not expired), or the
    explicitly enabled loopback access."""
    if password_set():
        s = session.get("staff")
        if not isinstance(s, dict):
            return False
        fp, exp = s.get("fp"), s.get("exp")
        return (isinstance(fp, str) and isinstance(exp, (int, float)) and exp > time.time()
                and hmac.compare_digest(fp, _fingerprint()))
    return local_only() and is_local()


@bp.before_request
def _guard() -> Any:
    if request.endpoint in ("staff.login", "staff.logout"):
        return None
    if password_set():
        if not is_staff():
            session.pop("staff", None)
            return redirect(url_for("staff.login", next=request.path))
        return None
    if not local_only():
        abort(403, description=CLOSED)
    if not is_local():
        abort(403, description="no staff password is set, so the staff pages answer only on this machine "
                               "(127.0.0.1). Run `python -m kiosk staff-password` to use them from another device.")
    return None


def _back(default: str) -> Any:
    nxt = request.form.get("next") or request.args.get("next") or ""
    if not nxt.startswith("/staff") or "//" in nxt or "\\" in nxt:
        nxt = default
    return redirect(nxt, code=303)


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    if not password_set():
        if local_only() and is_local():
            return redirect(url_for("staff.queue"))
        abort(403, description=CLOSED)
    error = None
    if request.method == "POST":
        st = state()
        wait = st.login_throttle.retry_after()
        if wait:
            from werkzeug.exceptions import TooManyRequests

            exc = TooManyRequests(description=f"Too many failed staff logins from everywhere: logins are paused "
                                              f"for {wait} seconds.")
            exc.retry_after = wait  # type: ignore[attr-defined]
            raise exc
        given = request.form.get("password", "")
        if st.passwords.check(given):
            session.clear()
            hours = st.cfg.staff_session_hours
            session["staff"] = {"fp": _fingerprint(), "exp": time.time() + hours * 3600}
            log.info("staff login from %s", request.remote_addr)
            return _back(url_for("staff.queue"))
        st.login_throttle.failed()
        error = "wrong password"
        log.warning("failed staff login from %s", request.remote_addr)
    return render_template("staff/login.html", error=error, next=request.args.get("next", "")), (
        401 if error else 200)


@bp.post("/logout")
def logout() -> Any:
    session.pop("staff", None)
    return redirect(url_for("public.index"), code=303)


@bp.get("/")
def queue() -> str:
    store = get_store()
    waiting = store.jobs(["held", "running", "queued"], limit=100)
    failed = store.jobs(["failed"], limit=30)
    workers = store.workers_alive(within=24 * 3600)
    now = time.time()
    for w in workers:
        w["age"] = now - w["beat_at"]
    return render_template("staff/queue.html", waiting=waiting, failed=failed, workers=workers,
                           local_only=not password_set(), positions={j.id: store.queue_position(j.id) for j in waiting},
                           reasons={j.id: store.held_reason(j.id) for j in waiting if j.status == "held"})


@bp.get("/pieces")
def pieces() -> str:
    before = id_arg("before")
    items = get_store().recent_pieces(48, include_hidden=True, before_id=before)
    older = items[-1].id if len(items) == 48 else None
    return render_template("staff/pieces.html", pieces=items, older=older, local_only=not password_set())


@bp.get("/curate")
def curate() -> str:
    which = request.args.get("filter", "unreviewed")
    if which not in CURATION_FILTERS:
        abort(400, description=f"unknown filter {which[:20]!r}; one of {', '.join(CURATION_FILTERS)}")
    items = get_store().recent_pieces(120, include_hidden=True, curation=None if which == "all" else which)
    return render_template("staff/curate.html", pieces=items, which=which, filters=CURATION_FILTERS,
                           local_only=not password_set())


_JOB_DO: dict[str, Callable[[Any, int], bool]] = {
    "approve": lambda s, i: s.approve(i),
    "cancel": lambda s, i: s.cancel(i),
    "retry": lambda s, i: s.retry(i),
}
_PIECE_DO: dict[str, Callable[[Any, int], bool]] = {
    "hide": lambda s, i: s.set_hidden(i, True),
    "unhide": lambda s, i: s.set_hidden(i, False),
    "keep": lambda s, i: s.set_curation(i, "keep"),
    "reject": lambda s, i: s.set_curation(i, "reject"),
    "clear": lambda s, i: s.set_curation(i, None),
}


@bp.post("/job/<id:job_id>/<action>")
def job_action(job_id: int, action: str) -> Any:
    if action not in _JOB_DO:
        abort(400, description=f"unknown action {action[:20]!r}; one of {', '.join(JOB_ACTIONS)}")
    store = get_store()
    if store.get_job(job_id) is None:
        abort(404, description=f"there is no job {job_id}")
    if not _JOB_DO[action](store, job_id):
        abort(409, description=f"job {job_id} cannot be {action}d in its current state")
    log.info("staff %s job %d", action, job_id)
    return _back(url_for("staff.queue"))


@bp.post("/piece/<id:piece_id>/<action>")
def piece_action(piece_id: int, action: str) -> Any:
    if action not in _PIECE_DO:
        abort(400, description=f"unknown action {action[:20]!r}; one of {', '.join(PIECE_ACTIONS)}")
    if not _PIECE_DO[action](get_store(), piece_id):
        abort(404, description=f"there is no piece {piece_id}")
    log.info("staff %s piece %d", action, piece_id)
    return _back(url_for("staff.pieces"))
