"""MQTT fuzz against a real ``ftl-agent serve``: thousands of mutations of what a cloud sends
(``agent_envelope_fuzz``) through a real mosquitto on the agent's own topics.

Checked: the process never dies (the same pid throughout); every case is judged and
counted (the agent's message tally grows by exactly the cases sent, by family);
nothing raises inside the agent (no ``internal``); the installed model is the one
it started with; nothing is trained. The CI slice sends 2,000 cases; ``-m perf``
(``make bench``) 10,000.
"""

from __future__ import annotations

import collections
import json

import pytest
from safetensors.numpy import load_file

from ftlct.agent.store.database import Database
from ftlct.agent.sync.message_tally import message_counts
from ftlct.protocol.mqtt_connection import MqttSettings, new_client, parse_broker_url
from tests.agent.agent_envelope_fuzz import AgentEnvelopeFuzzer
from tests.agent.federation_peers import AGENT_ENV, FED, agent_status, federation_args
from tests.agent.federation_support import ScriptedCloud
from tests.support.dicom_peers import running_agent, wait_for
from tests.support.mosquitto import running_mosquitto

pytestmark = pytest.mark.reliability

SITE = "site-z"
CHUNK = 200
# Valid and hostile-but-signed rounds go first: a signed round with a huge number (an
# extreme_number case) is kept, and every later announcement is then older, so stale.
FIRST = {"valid_round": 0, "valid_receipt": 1, "hostile_recipe": 2}


def tally(data_dir) -> dict[str, int]:
    db = Database(data_dir / "index.sqlite", create=False)
    try:
        return message_counts(db)
    finally:
        db.close()


def publisher(url: str):
    client = new_client("fuzzer", parse_broker_url(url), MqttSettings())
    broker = parse_broker_url(url)
    client.connect(broker.host, broker.port, keepalive=30)
    client.loop_start()
    return client


def run_fuzz(tmp_path, model_dir, count: int) -> None:
    manifest = json.loads((model_dir.path / "manifest.json").read_text())
    head = load_file(str(model_dir.path / manifest["head"]["weights"]))
    cloud = ScriptedCloud(tmp_path / "cloud-keys", FED)
    fuzzer = AgentEnvelopeFuzzer(
        FED,
        SITE,
        cloud.identity,
        manifest["labels"],
        manifest["backbone"]["sha256"],
        {name: tuple(array.shape) for name, array in head.items()},
        seed=0,
    )
    cases = list(fuzzer.cases(count))
    by_family = collections.defaultdict(list)
    for case in cases:
        by_family[case.family].append(case)
    with running_mosquitto(tmp_path / "broker") as broker:
        args = federation_args(broker.url, SITE, cloud.key)
        with running_agent(tmp_path, model_dir.path, *args, env=AGENT_ENV) as agent:
            pid = agent.process.pid
            wait_for(lambda: agent_status(agent.data_dir)["federation"]["connected"], 60)
            installed = agent_status(agent.data_dir)["model_version"]
            client = publisher(broker.url)
            table: dict[str, collections.Counter] = {}
            sent = 0
            try:
                for family in sorted(by_family, key=lambda f: (f not in FIRST, FIRST.get(f), f)):
                    family_cases = by_family[family]
                    before = collections.Counter(tally(agent.data_dir))
                    for first in range(0, len(family_cases), CHUNK):
                        chunk = family_cases[first : first + CHUNK]
                        infos = [client.publish(c.topic, c.payload, qos=1) for c in chunk]
                        for info in infos:
                            info.wait_for_publish(60)
                        sent += len(chunk)
                        wait_for(
                            lambda n=sent: sum(tally(agent.data_dir).values()) >= n,
                            timeout=300,
                            interval=0.5,
                        )
                        assert agent.alive() and agent.process.pid == pid, agent.log()[-3000:]
                    after = collections.Counter(tally(agent.data_dir))
                    table[family] = after - before
                    assert sum(table[family].values()) == len(family_cases), (family, table)
            finally:
                client.disconnect()
                client.loop_stop()
            counts = tally(agent.data_dir)
            assert sum(counts.values()) == len(cases)  # every case judged, none twice
            assert counts.get("internal", 0) == 0, agent.log()[-3000:]
            status = agent_status(agent.data_dir)
            assert status["model_version"] == installed  # junk never reached the engine
            fed = status["federation"]
            assert fed["updates_made"] == 0  # no round trained
            assert table["valid_round"]["round_kept"] > 0  # the loop was judging, not dropping
            print_table(table)


def print_table(table: dict[str, collections.Counter]) -> None:
    outcomes = sorted({o for counts in table.values() for o in counts})
    print(f"\n| family | cases | {' | '.join(outcomes)} |")
    print("| --- | ---: |" + " ---: |" * len(outcomes))
    total = collections.Counter()
    for family, counts in sorted(table.items()):
        total.update(counts)
        cells = " | ".join(str(counts.get(o, 0)) for o in outcomes)
        print(f"| {family} | {sum(counts.values())} | {cells} |")
    cells = " | ".join(str(total.get(o, 0)) for o in outcomes)
    print(f"| all | {sum(total.values())} | {cells} |")


def test_thousands_of_hostile_cloud_messages_leave_the_agent_serving_its_model(tmp_path, model_dir):
    run_fuzz(tmp_path, model_dir, count=2000)


@pytest.mark.perf
@pytest.mark.timeout(3600)
def test_the_full_agent_mqtt_fuzz_run(tmp_path, model_dir):
    run_fuzz(tmp_path, model_dir, count=10_000)
