"""The phone and staff web app (Flask): recent pieces, downloads, visitors' prompts, moderation.

``create_app(cfg, store)`` is the application factory; ``serve(cfg)`` runs it with waitress.
The app talks to the renderer only through the store, and never imports torch.
"""
from __future__ import annotations

import html
import json
import logging
import math
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

from flask import Flask, abort, current_app, jsonify, render_template, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_wtf.csrf import CSRFError, CSRFProtect, generate_csrf
from werkzeug.exceptions import HTTPException
from werkzeug.routing import BaseConverter, ValidationError

from exhibits.config import Exhibit, load_exhibits
from exhibits import service
from exhibits.moderation import Moderator
from exhibits.show import ShowConfig, public_base_url
from exhibits.store import Store, StoreFault, classify_fault, integrity_words
from kiosk.web.exports import ExportQueue
from kiosk.web.security import LoginThrottle, PasswordSource, capped_channel_class, wrap_proxies

log = logging.getLogger(__name__)

SECRET_SETTING = "web_secret_key"
CSRF_FIELD = "csrf_token"
MAX_ID = 2**63 - 1  # SQLite's INTEGER
MAX_JSON_DEPTH = 8
CSRF_MESSAGE = "the form has expired or did not come from this site: reload the page and try again"
STORE_DOWN = ("The archive is not available right now, so pieces and prompts have to wait. The gallery staff "
              "can see why.")
STORE_RETRY_AFTER = 30
INTEGRITY_EVERY = 60.0  # seconds between PRAGMA quick_check runs for /healthz


@dataclass
class WebState:
    """Per-app state: the show config, the exhibits and the store (one SQLite connection per thread)."""

    cfg: ShowConfig
    base_store: Store
    exhibits: dict[str, Exhibit]
    limiter: Limiter
    passwords: PasswordSource
    login_throttle: LoginThrottle
    moderator: Moderator
    exports: ExportQueue
    lock: threading.Lock = field(default_factory=threading.Lock)
    health: dict = field(default_factory=dict)  # the last PRAGMA quick_check for /healthz

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


class IdConverter(BaseConverter):
    """``<id:piece_id>``: ASCII digits only (no fullwidth or other scripts' digits), at most 2**63-1; else 404."""

    regex = r"[0-9]{1,19}"

    def to_python(self, value: str) -> int:
        n = int(value)
        if n > MAX_ID:
            raise ValidationError()
        return n

    def to_url(self, value: Any) -> str:
        return str(int(value))


def id_arg(name: str) -> int | None:
    """An optional id in the query string (``?before=42``): 400 naming it when it is not one."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    if not re.fullmatch(r"[0-9]{1,19}", raw) or int(raw) > MAX_ID:
        abort(400, description=f"{name} must be a piece number from 0 to {MAX_ID}")
    return int(raw)


def _utf8_position(data: bytes) -> int | None:
    try:
        data.decode("utf-8")
        return None
    except UnicodeDecodeError as exc:
        return exc.start


def check_body_encoding() -> None:
    """Forms and JSON must be UTF-8 text: a 400 that says so (before the CSRF check can call it expired)."""
    if request.method not in ("POST", "PUT", "PATCH", "DELETE"):
        return
    mime = request.mimetype
    if mime == "application/x-www-form-urlencoded":
        data = request.get_data(cache=True)
        for part in data.split(b"&"):
            for piece in part.split(b"=", 1):
                if _utf8_position(unquote_to_bytes(piece.replace(b"+", b" "))) is not None:
                    abort(400, description="the form is not valid UTF-8 text: send it again from the page")
    elif mime == "application/json" or mime.endswith("+json"):
        at = _utf8_position(request.get_data(cache=True))
        if at is not None:
            abort(400, description=f"the JSON body is not valid UTF-8 text (bad byte at offset {at})")


def _json_depth(text: str) -> int:
    """How deeply arrays and objects nest (strings skipped), without building anything."""
    depth = deepest = 0
    in_str = esc = False
    for c in text:
        if in_str:
            if esc:
                esc = False
            elif c == "\\":
                esc = True
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth -= 1
    return deepest


def json_body() -> dict[str, Any]:
    """The request's JSON object, or a 400 that says what is wrong (too deep, not JSON, not an object)."""
    text = request.get_data(cache=True).decode("utf-8")  # encoding checked by check_body_encoding
    if _json_depth(text) > MAX_JSON_DEPTH:
        abort(400, description=f"the JSON body nests deeper than {MAX_JSON_DEPTH} levels; send a flat object "
                               'like {"prompt": "..."}')
    try:
        data = json.loads(text)
    except ValueError as exc:
        abort(400, description=f"the body is not valid JSON ({str(exc)[:80]})")
    if not isinstance(data, dict):
        abort(400, description='send a JSON object like {"prompt": "..."}')
    return data


def csrf_token() -> str:
    return generate_csrf()


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
    return max(1, math.ceil(lim.reset_at - time.time()))


def _handle_http_error(exc: HTTPException) -> Any:
    code = exc.code or 500
    message = exc.description or exc.name
    retry = getattr(exc, "retry_after", None) or (_retry_after_seconds() if code == 429 else None)
    if isinstance(exc, CSRFError):
        message = CSRF_MESSAGE
    elif code == 429 and not getattr(exc, "retry_after", None):
        what = "logins from this address" if request.endpoint == "staff.login" else "prompts from this phone"
        message = f"Too many {what} (limit: {message})."
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


# -- store faults (503) ---------------------------------------------------------
def _store_fault_response(message: str, detail: str) -> Any:
    """503 with a plain message for visitors; /healthz and staff pages also get the file and what is wrong."""
    show_detail = request.path == "/healthz" or request.path.startswith("/staff")
    if wants_json():
        body: dict[str, Any] = {"error": message, "status": 503, "ok": False, "store": False,
                                "retry_after": STORE_RETRY_AFTER}
        if show_detail:
            body["detail"] = detail
        resp = jsonify(body)
    else:
        # Plain markup on the site's stylesheet: no template, so it renders whatever state the app is in.
        extra = f"<p><code>{html.escape(detail)}</code></p>" if show_detail else ""
        resp = current_app.response_class(
            "<!doctype html><html lang=en><head><meta charset=utf-8>"
            "<meta name=viewport content='width=device-width, initial-scale=1'><meta name=color-scheme content=dark>"
            "<title>Please wait</title><link rel=stylesheet href='/static/style.css'></head><body>"
            "<header class=top><span class=brand>Gallery</span></header><main><section class=error-page>"
            f"<p class=eyebrow>503 · Please wait</p><h1 class=section-title>{html.escape(message)}</h1>"
            f"<p class=retry>Try again in <strong>{STORE_RETRY_AFTER}</strong> seconds.</p>{extra}"
            "</section></main></body></html>", mimetype="text/html")
    resp.status_code = 503
    resp.headers["Retry-After"] = str(STORE_RETRY_AFTER)
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _handle_store_fault(exc: Exception) -> Any:
    fault = classify_fault(exc, Path(getattr(state().base_store, "db_path", "kiosk.sqlite3")))
    detail = str(fault or exc)
    log.error("store fault on %s %s: %s", request.method, request.path, detail)
    return _store_fault_response(STORE_DOWN, detail)


def health_report(store: Store, checked: dict) -> tuple[dict[str, Any], bool]:
    """Can the store be read and written right now? Reads what the pages read, writes one setting, and every
    INTEGRITY_EVERY seconds runs PRAGMA quick_check (cached in ``checked``)."""
    body: dict[str, Any] = {"time": time.time()}
    try:
        workers = store.workers_alive()
        body.update(workers_alive=len(workers), queue=store.count_queued(), running=len(store.running()),
                    pieces=store.count_pieces(),
                    workers=[{"id": w["id"], "state": w["state"], "device": w["device"]} for w in workers])
        store.recent_pieces(1)
        store.set_setting("web_health_at", body["time"])  # a real write: a full disk or a lock shows here
        if time.monotonic() - checked.get("at", float("-inf")) > INTEGRITY_EVERY:
            checked.update(at=time.monotonic(), words=integrity_words(store.db_path, quick=True))
        if checked["words"] != ["ok"]:
            raise StoreFault(f"{store.db_path}: PRAGMA quick_check says: {'; '.join(checked['words'][:5])}")
    except (StoreFault, sqlite3.Error, OSError) as exc:
        fault = classify_fault(exc, store.db_path) or exc
        checked.pop("at", None)  # check again next time
        log.error("health check failed: %s", fault)
        body.update(ok=False, store=False, error=str(fault))
        return body, False
    body.update(ok=True, store=True)
    return body, True


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
        WTF_CSRF_TIME_LIMIT=None, WTF_CSRF_FIELD_NAME=CSRF_FIELD,
        KIOSK_LOGIN_LIMIT="10 per minute", KIOSK_EXPORT_PROCESSES=1,
        KIOSK_VENDOR_DIR=str(Path(__file__).resolve().parents[2] / "vendor" / "node_modules"),
    )
    if config_file is not None:
        app.config.from_pyfile(str(config_file))
    limiter = Limiter(get_remote_address, app=app, storage_uri=app.config["RATELIMIT_STORAGE_URI"],
                      default_limits=[], headers_enabled=True)
    from exhibits.show import piece_url

    app.extensions["kiosk"] = WebState(
        cfg=cfg, base_store=store, exhibits=exhibits, limiter=limiter,
        passwords=PasswordSource(cfg.config_path, cfg.staff_password_hash, cfg.staff_password),
        login_throttle=LoginThrottle(), moderator=Moderator(cfg.blocked_words),
        exports=ExportQueue(store.root, processes=app.config["KIOSK_EXPORT_PROCESSES"],
                            cache_bytes=cfg.export_cache_mb << 20, url_for_piece=lambda pid: piece_url(cfg, pid),
                            weights_dir=cfg.weights))
    app.url_map.converters["id"] = IdConverter

    from kiosk.web import public, staff

    app.register_blueprint(public.bp)
    app.register_blueprint(staff.bp)
    # Visitors' prompts share one budget per client, whichever way they arrive.
    submit_limit = limiter.shared_limit(lambda: cfg.prompt_rate_limit, scope="visitor-prompt", methods=["POST"],
                                         deduct_when=lambda resp: resp.status_code < 400)
    for endpoint in ("public.submit", "public.api_submit"):
        app.view_functions[endpoint] = submit_limit(app.view_functions[endpoint])
    # Failed logins per address; the global budget across addresses is staff.login's LoginThrottle.
    login_limit = limiter.limit(lambda: app.config["KIOSK_LOGIN_LIMIT"], methods=["POST"],
                                deduct_when=lambda resp: resp.status_code == 401)
    app.view_functions["staff.login"] = login_limit(app.view_functions["staff.login"])

    # Encoding first, so an undecodable form is called undecodable rather than expired.
    app.before_request(check_body_encoding)
    CSRFProtect(app)  # every POST, whatever its content type: form field or X-CSRFToken header
    app.register_error_handler(HTTPException, _handle_http_error)
    app.register_error_handler(StoreFault, _handle_store_fault)
    app.register_error_handler(sqlite3.Error, _handle_store_fault)
    app.jinja_env.globals.update(csrf_token=csrf_token, csrf_field=CSRF_FIELD, show=cfg)
    app.jinja_env.filters["label"] = lambda p: p.label or p.generator
    app.wsgi_app = wrap_proxies(app.wsgi_app, cfg.trusted_proxies)  # type: ignore[method-assign]

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


def make_server(app: Any, host: str, port: int, *, threads: int = 6) -> Any:
    """A waitress server for ``app`` that stays responsive to slow and idle clients: idle connections close
    after 30 s, and one address may hold at most ``max_connections_per_address`` of them (the trusted proxies
    excepted: their own ``limit_conn`` does that job)."""
    from waitress.channel import HTTPChannel
    from waitress.server import BaseWSGIServer, create_server

    cfg: ShowConfig = app.cfg if isinstance(app, StoreGuardedApp) else app.extensions["kiosk"].cfg
    sockets: dict = {}
    srv = create_server(app, map=sockets, host=host, port=port, threads=threads, ident="kiosk",
                        channel_timeout=30, connection_limit=1000, cleanup_interval=10,
                        outbuf_overflow=4 << 20, asyncore_use_poll=True,
                        # waitress drops X-Forwarded-* unless told otherwise; with trusted_proxies set, the app's
                        # own middleware decides whom to believe (see kiosk.web.security.wrap_proxies)
                        clear_untrusted_proxy_headers=not cfg.trusted_proxies)
    exempt = cfg.trusted_proxies if isinstance(cfg.trusted_proxies, tuple) else \
        (("127.0.0.1", "::1") if cfg.trusted_proxies else ())
    channel = capped_channel_class(HTTPChannel, cfg.max_connections_per_address, exempt)
    for s in list(sockets.values()):
        if isinstance(s, BaseWSGIServer):
            s.channel_class = channel
    return srv


def maintenance_app(cfg: ShowConfig, error: Exception) -> Flask:
    """What answers while the store cannot be opened: 503 everywhere, /healthz not ok with the reason."""
    app = Flask(__name__)

    @app.route("/", defaults={"path": ""}, methods=["GET", "POST", "HEAD"])
    @app.route("/<path:path>", methods=["GET", "POST", "HEAD"])
    def down(path: str) -> Any:
        return _store_fault_response(STORE_DOWN, str(error))

    return app


class StoreGuardedApp:
    """The WSGI app waitress serves: the real app, or while the store cannot be opened (damaged, missing, locked)
    a maintenance app answering 503; it tries to open the store again at most every ``retry`` seconds, so the
    site comes back by itself once staff restore the archive."""

    def __init__(self, cfg: ShowConfig, *, retry: float = 5.0, start_exports: bool = False, **create_kw: Any):
        self.cfg, self.retry, self.create_kw, self.start_exports = cfg, retry, create_kw, start_exports
        self.app: Flask | None = None
        self.error: Exception | None = None
        self._next_try = 0.0
        self._lock = threading.Lock()
        self._build()

    def _build(self) -> None:
        try:
            self.app = create_app(self.cfg, **self.create_kw)
            self.app.extensions["kiosk"].base_store.record_web_address(
                self.cfg.host, self.cfg.port, public_base_url(self.cfg))
            if self.start_exports:
                self.app.extensions["kiosk"].exports.start()
            self.error = None
            log.info("web app: the archive is open")
        except StoreFault as exc:
            if self.error is None or str(exc) != str(self.error):
                log.error("web app: cannot open the archive, answering 503 until it can: %s", exc)
            self.error, self.app = exc, None
            self._maintenance = maintenance_app(self.cfg, exc)
        self._next_try = time.monotonic() + self.retry

    def __call__(self, environ: dict, start_response: Any) -> Any:
        if self.app is None and time.monotonic() >= self._next_try:
            with self._lock:
                if self.app is None and time.monotonic() >= self._next_try:
                    self._build()
        app = self.app or self._maintenance
        return app(environ, start_response)


def _watchdog_loop(host: str, port: int, stop: threading.Event) -> None:
    """Ping systemd's watchdog while waitress answers: a GET /healthz on ourselves (any HTTP status counts: the
    loop answering is what is checked, a 503 for a damaged store must not restart us into the same 503)."""
    import urllib.error
    import urllib.request

    target = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    url = f"http://{'[' + target + ']' if ':' in target else target}:{port}/healthz"
    first = True
    interval = min(10.0, (service.watchdog_interval() or 20.0) / 4)
    while not stop.wait(0.2 if first else interval):
        try:
            urllib.request.urlopen(url, timeout=5).close()
        except urllib.error.HTTPError:
            pass  # it answered
        except OSError as exc:
            log.debug("web watchdog: %s did not answer: %s", url, exc)
            continue
        if first:
            service.ready(f"web app on {url.rsplit('/', 1)[0]}")
            first = False
        service.watchdog()


def serve(cfg: ShowConfig, store: Store | None = None, *, threads: int = 6) -> None:
    """Run the app with waitress on ``cfg.host:cfg.port`` (blocks). A store that cannot be opened gives a 503
    maintenance page (and a not-ok /healthz) until it can, instead of a crash loop."""
    threads = min(8, max(4, threads))
    guarded = StoreGuardedApp(cfg, start_exports=True, **({"store": store} if store is not None else {}))
    srv = make_server(guarded, cfg.host, cfg.port, threads=threads)
    stop = threading.Event()
    threading.Thread(target=_watchdog_loop, args=(cfg.host, cfg.port, stop), name="web-watchdog", daemon=True).start()
    log.info("web app on http://%s:%d (%d threads)", cfg.host, cfg.port, threads)
    try:
        srv.run()
    finally:
        stop.set()
        if guarded.app is not None:
            guarded.app.extensions["kiosk"].exports.stop()
