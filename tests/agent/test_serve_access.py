"""Who may store: the calling-AE allow-list, the disk watermark, TLS with client certificates.

Each test runs ``ftl-agent serve`` as a subprocess and talks to it with dcmtk.
"""

from __future__ import annotations

import pytest

from tests.agent.dicom_files import CT_SMALL
from tests.agent.tls_certs import make_tls_files
from tests.support.dicom_peers import echoscu, running_agent, storescu
from tests.support.ports import LOOPBACK


def send(agent, *options, files=(CT_SMALL,)):
    return storescu(*options, "-aec", agent.ae_title, LOOPBACK, str(agent.port), *map(str, files))


def test_calling_ae_not_on_the_allow_list_is_refused_and_nothing_stored(tmp_path, model_path):
    with running_agent(tmp_path, model_path, "--allow-ae", "PACS", "--allow-ae", "CT1") as agent:
        refused = send(agent, "-aet", "INTRUDER")
        assert refused.returncode != 0
        assert "Association Rejected" in refused.stderr + refused.stdout
        assert agent.stored_sop_uids() == set()
        assert agent.alive()
        accepted = send(agent, "-aet", "CT1")  # the same file from a known AE goes through
        assert accepted.returncode == 0, accepted.stderr
        assert len(agent.stored_sop_uids()) == 1


def test_below_the_disk_watermark_associations_are_refused(tmp_path, model_path):
    env = {"FTLCT_AGENT_STORAGE_MIN_FREE_BYTES": "1000000TB"}
    with running_agent(tmp_path, model_path, env=env) as agent:
        refused = send(agent, "-aet", "PACS")
        assert refused.returncode != 0
        assert "Association Rejected" in refused.stderr + refused.stdout
        assert agent.stored_sop_uids() == set()
        assert not list((agent.data_dir / "instances").rglob("*.dcm"))
        assert agent.alive()


def test_echo_answers(tmp_path, model_path):
    with running_agent(tmp_path, model_path) as agent:
        result = echoscu("-aec", agent.ae_title, LOOPBACK, str(agent.port))
        assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def test_tls_agent_accepts_storescu_over_tls_and_refuses_plain(tmp_path, model_path, tls):
    env = {
        "FTLCT_AGENT_TLS_CERT": str(tls.server_cert),
        "FTLCT_AGENT_TLS_KEY": str(tls.server_key),
        "FTLCT_AGENT_TLS_CA": str(tls.ca_cert),
        "FTLCT_AGENT_TLS_REQUIRE_CLIENT_CERT": "true",
    }
    with running_agent(tmp_path, model_path, env=env) as agent:
        plain = send(agent, "-aet", "PACS")
        assert plain.returncode != 0
        assert agent.stored_sop_uids() == set()

        stranger = send(
            agent,
            "-aet",
            "PACS",
            "+tls",
            str(tls.stranger_key),
            str(tls.stranger_cert),
            "+cf",
            str(tls.ca_cert),
        )
        assert stranger.returncode != 0  # a certificate our CA did not sign
        assert agent.stored_sop_uids() == set()

        secure = send(
            agent,
            "-aet",
            "PACS",
            "+tls",
            str(tls.client_key),
            str(tls.client_cert),
            "+cf",
            str(tls.ca_cert),
        )
        assert secure.returncode == 0, secure.stderr + secure.stdout
        assert len(agent.stored_sop_uids()) == 1
        assert agent.alive()
