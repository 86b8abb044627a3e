"""The dashboard of a real ``ftl-cloud serve --http``, as a real headless Chromium shows it.

Two scripted sites run two rounds through mosquitto with local metrics, one
publishes its twin and the other's last will says offline, one update (for a
round that is not open) is refused; then Chromium opens the page with the token (redirect + cookie) and
the rendered DOM is checked.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from ftlct.cloud.dashboard.access_token import dashboard_token
from ftlct.cloud.state import StateStore
from ftlct.protocol import exchange
from ftlct.protocol.identity import load_or_create_identity
from ftlct.protocol.twin_state import Latency, PrivacyBudget, QueueDepths, ScannerProfile, TwinState
from tests.cloud.harness import (
    FED,
    CloudProcess,
    ScriptedSite,
    delta,
    make_tiny_model,
    wait_until,
)
from tests.support.mosquitto import running_mosquitto
from tests.support.ports import LOOPBACK, free_port, wait_for_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium(tmp_path: Path, url: str, *action: str) -> subprocess.CompletedProcess:
    if not Path(CHROMIUM).is_file():
        pytest.skip("chromium not installed (Debian package chromium: make system-deps)")
    profile = tmp_path / "chromium-profile"
    return subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=5000",
         *action, url],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip


def dashboard_key(state: Path) -> str:
    """The cloud's public key (serve creates it in the state dir at start)."""
    return wait_until(
        lambda: (
            (state / "keys" / "cloud.ed25519").is_file()
            and load_or_create_identity(state / "keys", "cloud").public_b64
        ),
        what="cloud key",
    )


def _twin(site: ScriptedSite) -> bytes:
    state = TwinState(
        status="inferring",
        agent_version="0.1.0",
        model_version="r2-global-x",
        queue_depths=QueueDepths(assembling=1, inference=4, training=0, results=2),
        latency=Latency(p50_s=5.2, p95_s=7.9),
        privacy=PrivacyBudget(epsilon_spent=1.5, epsilon_limit=10.0, delta=1e-5, rounds=2),
        scanner=ScannerProfile(
            manufacturer="ACME Medical",
            model_name="Tomo 64",
            kernels={"B30f": 12},
            modalities={"CT": 12},
            median_kvp=120.0,
        ),
    )
    return exchange.build_twin_state(site.identity, FED, state)


@pytest.fixture(scope="module")
def served_federation(tmp_path_factory):
    root = tmp_path_factory.mktemp("dashboard")
    with running_mosquitto(root / "broker") as broker:
        yield from _federation(root, broker, make_tiny_model(root / "model"))


def _federation(tmp_path, mosquitto_broker, tiny_model):
    state = tmp_path / "state"
    sites = {
        n: ScriptedSite(n, tmp_path / "keys", mosquitto_broker.url) for n in ("north", "south")
    }
    store = StateStore.open(state)
    for name, site in sites.items():
        store.sites.enroll(name, site.identity.public_b64)
    store.close()
    port = free_port()
    cloud = CloudProcess(
        state,
        ["--broker", mosquitto_broker.url, "--federation", FED, "--model", str(tiny_model.path),
         "--min-sites", "2", "--round-timeout", "60", "--http", f"{LOOPBACK}:{port}"],
    ).start()  # fmt: skip
    try:
        wait_for_port(port, proc=cloud.process, timeout=30)
        for site in sites.values():
            site.connect().subscribe(f"ftl/{FED}/#")
        cloud_key = dashboard_key(state)
        # the cloud subscribes before it announces: once round 1 is seen, updates reach it
        wait_until(lambda: sites["south"].round(cloud_key), what="round 1 announced")
        base = "v0"
        metrics = {1: ((0.55, 0.9), (0.65, 0.8)), 2: ((0.75, 0.5), (0.85, 0.4))}
        first = {}
        for number, scores in metrics.items():
            for (name, site), (f1, loss) in zip(sites.items(), scores, strict=True):
                payload = site.update(
                    number,
                    base,
                    delta(0.1, (0, 0)),
                    n=10,
                    metrics={"val_f1": f1, "train_loss": loss},
                )
                first.setdefault(name, payload)
                site.send(payload)
            cloud.wait_status(
                lambda s, n=number: s.get("rounds_completed") == n, what=f"round {number}"
            )
            base = cloud.status()["global_versions"]["global"]
        # round 1's update again is a duplicate (it counted once); one for round 7 is refused
        sites["north"].send(first["north"])
        sites["north"].send(sites["north"].update(7, base, delta(0.1, (0, 0)), n=10))
        sites["north"].publish(f"ftl/{FED}/twins/north/state", _twin(sites["north"]), retain=True)
        offline = exchange.build_offline_will(sites["south"].identity, FED, base)
        sites["south"].publish(f"ftl/{FED}/twins/south/state", offline, retain=True)
        cloud.wait_status(
            lambda s: s["updates_rejected"].get("wrong_round") and s["updates_duplicate"] == 1
            and s["sites"]["north"]["online"] and s["sites"]["south"]["status"] == "offline",
            what="the late update refused and both twins in",
        )  # fmt: skip
        yield {"url": f"http://{LOOPBACK}:{port}/", "state": state, "cloud": cloud}
    finally:
        cloud.stop()
        for site in sites.values():
            site.close()


def test_browser_shows_the_federation_and_every_twin(served_federation, tmp_path):
    token = dashboard_token(served_federation["state"])
    result = chromium(tmp_path, f"{served_federation['url']}?token={token}", "--dump-dom")
    dom = result.stdout
    assert result.returncode == 0 and "<html" in dom, result.stderr[-2000:]
    assert f"federation {FED}" in dom
    assert re.search(r"rounds completed: <b>2</b>", dom)
    assert re.search(r"strategy: <b>ftl</b>", dom)
    # two rounds on both curves of the F1 plot, weighted means in the rounds table
    (f1_points,) = re.findall(r'data-series="new local head"[^>]*points="([^"]+)"', dom)
    assert len(f1_points.split()) == 2
    assert re.search(r'data-series="loss"', dom)
    assert "0.800" in dom and "0.600" in dom  # round 2: mean F1 0.8; round 1: 0.6
    assert re.search(r"<td>wrong_round</td><td class=\"num\">1</td>", dom)
    north = re.search(r'<section class="twin" data-site="north">(.*?)</section>', dom).group(1)
    assert '<span class="online">online</span>' in north
    for shown in (
        "inferring",
        "0.1.0",
        "r2-global-x",
        "inference 4",
        "results 2",
        "p50 5.2 s, p95 7.9 s",
        "ε 1.5 of 10",
        "ACME Medical Tomo 64",
        "B30f 12",
    ):
        assert shown in north, shown  # fmt: skip
    south = re.search(r'<section class="twin" data-site="south">(.*?)</section>', dom).group(1)
    assert '<span class="offline">offline</span>' in south


def test_browser_without_the_token_sees_only_the_refusal(served_federation, tmp_path):
    result = chromium(tmp_path, served_federation["url"], "--dump-dom")
    assert "401" in result.stdout and "north" not in result.stdout
