"""Who may store: the calling-AE allow-list, the disk watermark, TLS with client certificates,
calling AE titles bound to their certificates.

Each test runs ``ftl-agent serve`` as a subprocess and talks to it with dcmtk.
"""

from __future__ import annotations

import hashlib
import ssl

import pytest

from tests.agent.dicom_files import CT_SMALL, ct_instance
from tests.agent.tls_certs import make_tls_files
from tests.support.dicom_peers import echoscu, running_agent, storescu
from tests.support.ports import LOOPBACK


def send(agent, *options, files=(CT_SMALL,)):
    return storescu(*options, "-aec", agent.ae_title, LOOPBACK, str(agent.port), *map(str, files))


@pytest.mark.parametrize("receive_processes", ["1", "2"])
def test_calling_ae_not_on_the_allow_list_is_refused_and_nothing_stored(
    tmp_path, model_path, receive_processes
):
    env = {"FTLCT_AGENT_DICOM_RECEIVE_PROCESSES": receive_processes}
    allow = ("--allow-ae", "PACS", "--allow-ae", "CT1")
    with running_agent(tmp_path, model_path, *allow, env=env) as agent:
        refused = send(agent, "-aet", "INTRUDER")
        assert refused.returncode != 0
        assert "Association Rejected" in refused.stderr + refused.stdout
        assert agent.stored_sop_uids() == set()
        assert agent.alive()
        accepted = send(agent, "-aet", "CT1")  # the same file from a known AE goes through
        assert accepted.returncode == 0, accepted.stderr
        assert len(agent.stored_sop_uids()) == 1


@pytest.mark.parametrize("receive_processes", ["1", "2"])
def test_below_the_disk_watermark_associations_are_refused(tmp_path, model_path, receive_processes):
    env = {
        "FTLCT_AGENT_STORAGE_MIN_FREE_BYTES": "1000000TB",
        "FTLCT_AGENT_DICOM_RECEIVE_PROCESSES": receive_processes,
    }
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


@pytest.mark.parametrize("receive_processes", ["1", "2"])  # in serve, or in 2 workers
def test_tls_agent_accepts_storescu_over_tls_and_refuses_plain(
    tmp_path, model_path, tls, receive_processes
):
    env = {
        "FTLCT_AGENT_DICOM_RECEIVE_PROCESSES": receive_processes,
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


def fingerprint(cert_path) -> str:
    der = ssl.PEM_cert_to_DER_cert(cert_path.read_text())
    return "sha256:" + hashlib.sha256(der).hexdigest()


@pytest.mark.parametrize("receive_processes", ["1", "2"])
def test_calling_ae_titles_bound_to_certificates_refuse_crossed_certificates(
    tmp_path, model_path, tls, receive_processes
):
    bound = f'{{PACS = "CN=pacs", CT1 = "{fingerprint(tls.ct_cert)}"}}'
    env = {
        "FTLCT_AGENT_TLS_CERT": str(tls.server_cert),
        "FTLCT_AGENT_TLS_KEY": str(tls.server_key),
        "FTLCT_AGENT_TLS_CA": str(tls.ca_cert),
        "FTLCT_AGENT_TLS_REQUIRE_CLIENT_CERT": "true",
        "FTLCT_AGENT_TLS_AE_CERTIFICATES": bound,
        "FTLCT_AGENT_DICOM_RECEIVE_PROCESSES": receive_processes,
    }

    def send_as(ae, key, cert, file):
        return send(
            agent, "-aet", ae, "+tls", str(key), str(cert), "+cf", str(tls.ca_cert), files=(file,)
        )

    files = [tmp_path / f"{k}.dcm" for k in range(2)]
    for path in files:
        ct_instance().save_as(path, enforce_file_format=True)
    with running_agent(tmp_path, model_path, env=env) as agent:
        crossed = [
            send_as("PACS", tls.ct_key, tls.ct_cert, files[0]),  # CT1's certificate as PACS
            send_as("CT1", tls.client_key, tls.client_cert, files[0]),  # PACS's as CT1
            send_as("OTHER", tls.client_key, tls.client_cert, files[0]),  # not bound at all
        ]
        for refused in crossed:
            assert refused.returncode != 0
            assert "Association Rejected" in refused.stderr + refused.stdout
        assert agent.stored_sop_uids() == set()
        assert agent.log().count("calling AE title not bound") == 3
        ok_pacs = send_as("PACS", tls.client_key, tls.client_cert, files[0])
        ok_ct = send_as("CT1", tls.ct_key, tls.ct_cert, files[1])
        assert (ok_pacs.returncode, ok_ct.returncode) == (0, 0), ok_pacs.stderr + ok_ct.stderr
        assert len(agent.stored_sop_uids()) == 2
        assert agent.alive()
