"""The dashboard over real HTTP: token required, read-only, hostile twin fields escaped."""

from __future__ import annotations

import http.client
import json
import socket
import stat
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest

from ftlct.cloud.dashboard.access_token import TOKEN_FILE, TokenError, dashboard_token
from ftlct.cloud.dashboard.http_server import DashboardServer, parse_http_address
from ftlct.cloud.dashboard.page import render_page
from ftlct.cloud.dashboard.snapshot import read_snapshot
from ftlct.cloud.state import RoundRow, StateStore
from ftlct.protocol.twin_state import TwinState

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def _state(state_dir, twin_fields: dict | None = None) -> None:
    """A state dir as ftl-cloud serve leaves it: a finished round with metrics, twins."""
    store = StateStore.open(state_dir)
    now = time.time()
    store.sites.enroll("site-a", "A" * 44)
    store.sites.enroll("site-b", "B" * 44)
    with store.transaction():
        store.meta.set("federation", "ct")
        store.meta.set("kind", "head")
        store.models.add("global", "r1-global-abc", 1, "v0", {"dense.0.bias": np.zeros(2)})
        store.models.save_federation(1, {"global": "r1-global-abc"}, {"site-a": "global"}, {})
        store.rounds.add(
            RoundRow(1, "done", "ftl", now - 30, now, 0, {"global": "v0"}, {}, "global", now, 2)
        )
        for site, f1 in (("site-a", 0.6), ("site-b", 0.8)):
            update = SimpleNamespace(
                site=site,
                update_id=f"u-{site}",
                cluster="global",
                base_version="v0",
                n_samples=10,
                metrics={"val_f1": f1, "train_loss": 0.5},
                delta={"dense.0.bias": np.zeros(2, np.float32)},
            )
            store.updates.add(1, update, 1.0)
        store.rejections.record(1, "site-b", "bad_signature", "forged")
        state = TwinState(status="idle", agent_version="0.1.0", model_version="r1-global-abc")
        twin = {**state.to_json(), **(twin_fields or {})}
        store.twins.save("site-a", twin, "idle", True, "r1-global-abc", now - 5)
    store.close()


@pytest.fixture
def dashboard(tmp_path):
    state = tmp_path / "state"
    _state(state, {"agent_version": HOSTILE})
    with DashboardServer(state, "127.0.0.1", 0) as server:
        yield server


def _get(server, path: str, headers: dict | None = None, method: str = "GET"):
    host, port = server.address
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def _auth(server) -> dict:
    return {"Authorization": f"Bearer {server.token}"}


def test_every_route_answers_401_without_the_token(dashboard):
    for path in ("/", "/status.json", "/dashboard.css", "/nothing"):
        status, headers, body = _get(dashboard, path)
        assert status == 401 and b"site-a" not in body and dashboard.token.encode() not in body
        assert headers["WWW-Authenticate"].startswith("Bearer")
    wrong = {"Authorization": "Bearer " + "x" * len(dashboard.token)}
    assert _get(dashboard, "/", wrong)[0] == 401
    assert _get(dashboard, "/?token=wrong")[0] == 401
    assert _get(dashboard, "/", {"Cookie": "ftlct_dashboard=wrong"})[0] == 401


def test_query_token_becomes_a_cookie_and_leaves_the_address(dashboard):
    status, headers, _ = _get(dashboard, f"/?token={dashboard.token}")
    assert status == 303 and headers["Location"] == "/"
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    status, _, body = _get(dashboard, "/", {"Cookie": cookie.split(";")[0]})
    assert status == 200 and b"site-a" in body


def test_page_escapes_a_hostile_twin_field(dashboard):
    status, headers, body = _get(dashboard, "/", _auth(dashboard))
    page = body.decode()
    assert status == 200
    assert (
        "<script" not in page
        and "<img" not in page
        and "onerror=alert" not in page.replace("onerror=alert(1)&gt;", "")
    )
    assert (
        "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;"
        in page
    )
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp  # no script may run
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["X-Frame-Options"] == "DENY"


def test_dashboard_is_read_only(dashboard, tmp_path):
    before = (tmp_path / "state" / "cloud.sqlite").read_bytes()
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, headers, _ = _get(dashboard, "/", _auth(dashboard), method=method)
        assert status == 405 and headers["Allow"] == "GET, HEAD"
    for _ in range(3):
        assert _get(dashboard, "/status.json", _auth(dashboard))[0] == 200
    assert (tmp_path / "state" / "cloud.sqlite").read_bytes() == before


def test_status_json_holds_history_and_twins(dashboard):
    status, headers, body = _get(dashboard, "/status.json", _auth(dashboard))
    data = json.loads(body)
    assert status == 200 and headers["Content-Type"] == "application/json"
    (round_1,) = data["history"]
    assert round_1["f1"] == pytest.approx(0.7) and round_1["loss"] == pytest.approx(0.5)
    assert round_1["rejected"] == {"bad_signature": 1}
    assert data["sites"]["site-a"]["twin"]["agent_version"] == HOSTILE  # stored as received
    assert data["sites"]["site-b"]["twin"] is None and not data["sites"]["site-b"]["online"]


def test_token_file_is_private_and_kept(tmp_path):
    token = dashboard_token(tmp_path / "s")
    path = tmp_path / "s" / TOKEN_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(token) >= 32
    assert dashboard_token(tmp_path / "s") == token  # never replaced
    path.chmod(0o644)
    with pytest.raises(TokenError, match="chmod 600"):
        dashboard_token(tmp_path / "s")


def test_http_address_defaults_to_loopback():
    assert parse_http_address("8080") == ("127.0.0.1", 8080)
    assert parse_http_address(":8080") == ("127.0.0.1", 8080)
    assert parse_http_address("0.0.0.0:9") == ("0.0.0.0", 9)
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_http_address("localhost")


def test_page_before_any_state_says_so(tmp_path):
    assert read_snapshot(tmp_path / "none") is None
    assert "no federation state yet" in render_page(None)


def test_snapshot_never_creates_a_state_dir(tmp_path):
    read_snapshot(tmp_path / "absent")
    assert not (tmp_path / "absent").exists()


def _serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ftlct.cloud", "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_serve_with_a_bad_http_address_says_so_in_one_line(tmp_path):
    result = _serve("--state-dir", str(tmp_path / "s"), "--http", "localhost")
    assert result.returncode == 1 and "--http wants HOST:PORT" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_serve_with_the_http_port_taken_says_so_in_one_line(tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        result = _serve("--state-dir", str(tmp_path / "s"), "--http", f"127.0.0.1:{port}")
    assert result.returncode == 1 and "Address already in use" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
