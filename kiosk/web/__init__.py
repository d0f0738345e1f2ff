"""The phone and staff web app (Flask): recent pieces, downloads, visitors' prompts, moderation.

``create_app(cfg, store)`` is the application factory; ``serve(cfg)`` runs it with waitress.
The app talks to the renderer only through the store, and never imports torch.
"""
from __future__ import annotations

import hmac
import logging
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Flask, abort, current_app, jsonify, render_template, request, session
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from werkzeug.exceptions import HTTPException

from exhibits.config import Exhibit, load_exhibits
from exhibits.show import ShowConfig
from exhibits.store import Store

log = logging.getLogger(__name__)

SECRET_SETTING = "web_secret_key"
CSRF_FIELD = "csrf_token"


@dataclass
class WebState:
    """Per-app state: the show config, the exhibits and the store (one SQLite connection per thread)."""

    cfg: ShowConfig
    base_store: Store
    exhibits: dict[str, Exhibit]
    limiter: Limiter
    export_locks: dict = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def store(self) -> Store:
        return self.base_store


def state() -> WebState:
    return current_app.extensions["kiosk"]


def get_store() -> Store:
    return state().store()


def visitor_exhibit_names(cfg: ShowConfig) -> list[str]:
    """Exhibits a visitor may choose, the default first."""
    names = list(dict.fromkeys(cfg.exhibits))
    default = cfg.visitor_exhibit or (names[0] if names else None)
    if default is None:
        return []
    return [default] + [n for n in names if n != default]


def _secret_key(store: Store) -> str:
    key = store.get_setting(SECRET_SETTING)
    if not isinstance(key, str) or len(key) < 32:
        key = secrets.token_hex(32)
        store.set_setting(SECRET_SETTING, key)
        log.info("generated the web app's secret key (kept in the store's settings)")
    return key


# -- CSRF ---------------------------------------------------------------------
def csrf_token() -> str:
    tok = session.get("csrf")
    if not tok:
        tok = session["csrf"] = secrets.token_urlsafe(24)
    return tok


def check_csrf() -> None:
    """Every state-changing form carries the session's token; JSON APIs need a JSON content type."""
    if request.method != "POST":
        return
    if request.is_json:
        return  # a cross-site form cannot send application/json without a CORS preflight
    sent = request.form.get(CSRF_FIELD, "")
    tok = session.get("csrf", "")
    if not tok or not sent or not hmac.compare_digest(str(sent), str(tok)):
        abort(400, description="the form has expired or did not come from this site: reload the page and try again")


# -- errors -------------------------------------------------------------------
def wants_json() -> bool:
    if request.path.startswith("/api/") or request.path == "/healthz":
        return True
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json" and request.accept_mimetypes[best] > request.accept_mimetypes["text/html"]


def _retry_after_seconds() -> int | None:
    lim = state().limiter.current_limit
    if lim is None:
        return None
    import math
    import time

    return max(1, math.ceil(lim.reset_at - time.time()))


def _handle_http_error(exc: HTTPException) -> Any:
    code = exc.code or 500
    message = exc.description or exc.name
    retry = _retry_after_seconds() if code == 429 else None
    if code == 429:
        message = f"Too many prompts from this phone (limit: {message})."
    if wants_json():
        body: dict[str, Any] = {"error": message, "status": code}
        if retry:
            body["retry_after"] = retry
        resp = jsonify(body)
    else:
        resp = current_app.make_response((render_template("error.html", code=code, title=exc.name,
                                                          message=message, retry_after=retry), code))
    resp.status_code = code
    if retry:
        resp.headers["Retry-After"] = str(retry)
    return resp


# -- factory ------------------------------------------------------------------
def create_app(cfg: ShowConfig, store: Store | None = None, *, testing: bool = False,
               config_file: str | Path | None = None) -> Flask:
    """Build the app for ``cfg``. ``store`` defaults to the store in ``cfg.data_dir``.

    ``config_file`` (a Python file of Flask settings, as in flaskr) overrides the defaults.
    """
    store = store if store is not None else Store(cfg.data_dir)
    exhibits = load_exhibits(visitor_exhibit_names(cfg) or None, extra_dirs=cfg.exhibit_dirs)
    app = Flask(__name__, instance_relative_config=False)
    app.config.update(
        SECRET_KEY=_secret_key(store), TESTING=testing, SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax", MAX_CONTENT_LENGTH=64 * 1024, JSON_SORT_KEYS=False,
        RATELIMIT_STORAGE_URI="memory://", RATELIMIT_HEADERS_ENABLED=True,
        SEND_FILE_MAX_AGE_DEFAULT=3600, KIOSK_PAGE_SIZE=24, KIOSK_POLL_MS=2000,
    )
    if config_file is not None:
        app.config.from_pyfile(str(config_file))
    limiter = Limiter(get_remote_address, app=app, storage_uri=app.config["RATELIMIT_STORAGE_URI"],
                      default_limits=[], headers_enabled=True)
    app.extensions["kiosk"] = WebState(cfg=cfg, base_store=store, exhibits=exhibits, limiter=limiter)

    from kiosk.web import public, staff

    app.register_blueprint(public.bp)
    app.register_blueprint(staff.bp)
    # Visitors' prompts share one budget per client, whichever way they arrive.
    submit_limit = limiter.shared_limit(lambda: cfg.prompt_rate_limit, scope="visitor-prompt", methods=["POST"],
                                         deduct_when=lambda resp: resp.status_code < 400)
    for endpoint in ("public.submit", "public.api_submit"):
        app.view_functions[endpoint] = submit_limit(app.view_functions[endpoint])
    login_limit = limiter.limit("10 per minute", methods=["POST"])
    app.view_functions["staff.login"] = login_limit(app.view_functions["staff.login"])

    app.before_request(check_csrf)
    app.register_error_handler(HTTPException, _handle_http_error)
    app.jinja_env.globals.update(csrf_token=csrf_token, csrf_field=CSRF_FIELD, show=cfg)
    app.jinja_env.filters["label"] = lambda p: p.label or p.generator

    @app.after_request
    def _headers(resp: Any) -> Any:
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("Referrer-Policy", "same-origin")
        resp.headers.setdefault("X-Frame-Options", "DENY")
        resp.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'")
        return resp

    return app


def serve(cfg: ShowConfig, store: Store | None = None, *, threads: int = 6) -> None:
    """Run the app with waitress on ``cfg.host:cfg.port`` (blocks)."""
    from waitress import serve as waitress_serve

    threads = min(8, max(4, threads))
    app = create_app(cfg, store)
    log.info("web app on http://%s:%d (%d threads)", cfg.host, cfg.port, threads)
    waitress_serve(app, host=cfg.host, port=cfg.port, threads=threads, ident="kiosk")
