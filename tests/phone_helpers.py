"""A phone on real HTTP (urllib with a cookie jar): fetches the CSRF token the page's script would, then posts
prompts to /api/submit. Used by the fault and soak tests against a live waitress server."""
from __future__ import annotations

import http.cookiejar
import json
import urllib.error
import urllib.request


class Phone:
    def __init__(self, base: str, timeout: float = 20.0):
        self.base, self.timeout = base, timeout
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        self.token = ""

    def request(self, path: str, data: bytes | None = None, headers: dict | None = None) -> tuple[int, str, dict]:
        req = urllib.request.Request(f"{self.base}{path}", data=data, headers=headers or {})
        try:
            with self.opener.open(req, timeout=self.timeout) as r:
                return r.status, r.read().decode(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(), dict(e.headers)

    def _fetch_token(self) -> None:
        status, body, _ = self.request("/api/session")
        self.token = json.loads(body).get("csrf_token", "") if status == 200 else ""

    def submit(self, prompt: str) -> tuple[int, str, dict]:
        """POST a prompt as the page's script does; a stale or missing token is fetched again once."""
        for attempt in range(2):
            if not self.token or attempt:
                self._fetch_token()
            answer = self.request("/api/submit", json.dumps({"prompt": prompt}).encode(),
                                  {"Content-Type": "application/json", "X-CSRFToken": self.token})
            if answer[0] != 400:
                return answer
        return answer
