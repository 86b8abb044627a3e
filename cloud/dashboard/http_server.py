"""The dashboard's HTTP server: stdlib ``http.server`` in a daemon thread, GET and HEAD only.

Routes: ``/`` (the page), ``/status.json`` (the same data), ``/dashboard.css``.
Every route needs the token (``access_token``): ``?token=`` once (answered with
a cookie and a redirect that drops it from the address bar), then the cookie,
or ``Authorization: Bearer TOKEN`` for scripts. Without it: 401 and nothing else.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from ftlct.cloud.dashboard.access_token import dashboard_token, token_matches
from ftlct.cloud.dashboard.page import render_page
from ftlct.cloud.dashboard.snapshot import SnapshotError, read_snapshot

log = logging.getLogger("ftlct.cloud.dashboard")

COOKIE = "ftlct_dashboard"
LOOPBACK = "127.0.0.1"
SECURITY_HEADERS = {
    # no script at all, styles only from this server, nothing framed, nothing posted
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def parse_http_address(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` or ``PORT`` -> (host, port); the host defaults to loopback."""
    host, _, port_text = text.strip().rpartition(":")
    host = host.strip("[]") or LOOPBACK
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"--http wants HOST:PORT (e.g. 127.0.0.1:8080), got {text!r}") from None
    if not 0 <= port < 65536:
        raise ValueError(f"--http port must be 0..65535, got {port}")
    return host, port


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class DashboardServer:
    """Serve the dashboard of ``state_dir`` on ``host:port`` until ``stop``."""

    def __init__(self, state_dir: str | Path, host: str = LOOPBACK, port: int = 0):
        self.state_dir = Path(state_dir)
        self.token = dashboard_token(self.state_dir)
        self.css = resources.files(__package__).joinpath("dashboard.css").read_bytes()
        handler = type("Handler", (_Handler,), {"dashboard": self})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None
        if not _is_loopback(host):
            log.warning(
                "dashboard listens on %s, beyond loopback: anyone with the token can read the "
                "fleet's state; prefer 127.0.0.1 behind an SSH tunnel or an HTTPS proxy",
                host,
            )

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.httpd.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}/"

    def start(self) -> DashboardServer:
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="dashboard", daemon=True
        )
        self._thread.start()
        log.info("dashboard on %s (token in %s)", self.url, self.state_dir / "dashboard.token")
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(timeout=10)
        self.httpd.server_close()

    def __enter__(self) -> DashboardServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    dashboard: DashboardServer
    server_version = "ftl-cloud-dashboard"
    sys_version = ""
    timeout = 15  # a client that sends nothing does not hold a thread for long

    def do_GET(self) -> None:
        self._answer(head=False)

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def _refuse_method(self) -> None:
        # read-only by construction: nothing here changes state, whatever the method
        self._send(
            HTTPStatus.METHOD_NOT_ALLOWED,
            b"read-only: GET and HEAD only\n",
            "text/plain",
            extra={"Allow": "GET, HEAD"},
        )

    do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _refuse_method

    def _answer(self, head: bool) -> None:
        url = urlsplit(self.path)
        query_token = (parse_qs(url.query).get("token") or [None])[0]
        if query_token is not None:
            if token_matches(self.dashboard.token, query_token):
                # keep the token out of the address bar, the history and Referer headers
                cookie = f"{COOKIE}={self.dashboard.token}; HttpOnly; SameSite=Strict; Path=/"
                self._send(
                    HTTPStatus.SEE_OTHER,
                    b"",
                    "text/plain",
                    extra={"Location": url.path or "/", "Set-Cookie": cookie},
                    head=head,
                )
            else:
                self._unauthorised(head)
            return
        if not token_matches(self.dashboard.token, self._presented_token()):
            self._unauthorised(head)
            return
        if url.path == "/dashboard.css":
            self._send(HTTPStatus.OK, self.dashboard.css, "text/css; charset=utf-8", head=head)
        elif url.path in ("/", "/index.html"):
            snapshot, error = self._snapshot()
            page = render_page(snapshot, error=error).encode()
            self._send(HTTPStatus.OK, page, "text/html; charset=utf-8", head=head)
        elif url.path == "/status.json":
            snapshot, error = self._snapshot()
            body = json.dumps(snapshot if error == "" else {"error": error}, indent=1).encode()
            self._send(HTTPStatus.OK, body, "application/json", head=head)
        else:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain", head=head)

    def _snapshot(self) -> tuple[dict | None, str]:
        try:
            return read_snapshot(self.dashboard.state_dir), ""
        except SnapshotError as exc:
            log.warning("%s", exc)
            return None, str(exc)

    def _presented_token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:]
        try:
            cookie = SimpleCookie(self.headers.get("Cookie", ""))
        except CookieError:
            return None
        return cookie[COOKIE].value if COOKIE in cookie else None

    def _unauthorised(self, head: bool) -> None:
        text = (
            "401: this dashboard needs its token: open /?token=TOKEN once, or send "
            "'Authorization: Bearer TOKEN'; the token is in dashboard.token in the cloud's "
            "state dir\n"
        )
        self._send(
            HTTPStatus.UNAUTHORIZED,
            text.encode(),
            "text/plain; charset=utf-8",
            extra={"WWW-Authenticate": 'Bearer realm="ftl-cloud"'},
            head=head,
        )

    def _send(self, status, body: bytes, content_type: str, extra=None, head=False) -> None:
        self.send_response(status)
        for name, value in {**SECURITY_HEADERS, **(extra or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        # the request line may carry ?token=: log the method and path only
        log.debug("dashboard %s %s", self.command, urlsplit(getattr(self, "path", "")).path)
