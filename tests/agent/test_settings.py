"""Typed settings: defaults < TOML < FTLCT_AGENT_* environment < flags; bad input names itself."""

from pathlib import Path

import pytest

from ftlct.agent.settings import (
    AgentSettings,
    SettingsError,
    default_data_dir,
    load_settings,
    parse_size,
)


def test_defaults_need_no_file_and_no_environment():
    settings = load_settings(env={})
    assert settings.dicom.port == 11112
    assert settings.dicom.ae_title == "FTLCT"
    assert settings.dicom.host == "127.0.0.1"
    assert settings.series.quiet_period_s == 5.0
    assert settings.storage.data_dir == default_data_dir()
    assert settings.inference.model_dir.parts[-2:] == ("models", "default")
    assert settings.metrics.port == 0
    assert settings.results.destination is None


def test_flags_beat_environment_beat_file(tmp_path):
    config = tmp_path / "agent.toml"
    config.write_text(
        '[dicom]\nport = 2000\nae_title = "FROMFILE"\nallow_ae = ["A", "B"]\n'
        '[storage]\nmin_free_bytes = "2GiB"\ndata_dir = "/srv/ftl"\n'
        "[series]\nquiet_period_s = 2.5\n"
    )
    env = {"FTLCT_AGENT_DICOM_PORT": "3000", "FTLCT_AGENT_INFERENCE_EAGER": "false"}
    settings = load_settings(config, env=env, overrides={"dicom.port": 4000, "dicom.host": None})
    assert settings.dicom.port == 4000  # flag
    assert settings.dicom.host == "127.0.0.1"  # a flag that was not given overrides nothing
    assert settings.dicom.ae_title == "FROMFILE"
    assert settings.dicom.allow_ae == ["A", "B"]
    assert settings.storage.min_free_bytes == 2 * 2**30
    assert settings.storage.data_dir == Path("/srv/ftl")
    assert settings.series.quiet_period_s == 2.5
    assert settings.inference.eager is False
    assert load_settings(config, env=env).dicom.port == 3000  # environment beats the file


def test_environment_lists_and_optional_values():
    env = {"FTLCT_AGENT_DICOM_ALLOW_AE": "PACS1, PACS2", "FTLCT_AGENT_TLS_CA": ""}
    settings = load_settings(env=env)
    assert settings.dicom.allow_ae == ["PACS1", "PACS2"]
    assert settings.tls.ca is None


def test_federation_flags_are_kept_for_the_sync_component():
    overrides = {
        "federation.broker": "mqtts://broker:8883",
        "federation.site": "site-a",
        "federation.name": "hospitals",
        "federation.cloud_key": "AAAA",
    }
    fed = load_settings(env={}, overrides=overrides).federation
    assert (fed.broker, fed.site, fed.name, fed.cloud_key) == (
        "mqtts://broker:8883",
        "site-a",
        "hospitals",
        "AAAA",
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"env": {"FTLCT_AGENT_DICOM_PROT": "1"}}, "unknown environment setting"),
        ({"env": {"FTLCT_AGENT_DICOM_PORT": "eleven"}}, "dicom.port"),
        ({"overrides": {"dicom.port": 70000}}, "dicom.port"),
        ({"overrides": {"dicom.ae_title": "A" * 17}}, "dicom.ae_title"),
        ({"overrides": {"dicom.allow_ae": ["BAD\\AE"]}}, "dicom.allow_ae"),
        ({"overrides": {"results.destination": "PACS@host"}}, "results.destination"),
        ({"overrides": {"federation.broker": "http://x:1"}}, "federation.broker"),
        ({"overrides": {"inference.aggregation": "max"}}, "inference.aggregation"),
        ({"overrides": {"inference.eager_niceness": 20}}, "inference.eager_niceness"),
        ({"overrides": {"tls.require_client_cert": True}}, "tls.require_client_cert"),
        ({"overrides": {"tls.cert": "/nonexistent.pem", "tls.key": "/x"}}, "tls.cert"),
        ({"overrides": {"storage.min_free_bytes": "lots"}}, "not a size"),
        ({"overrides": {"series.quiet_period_s": True}}, "series.quiet_period_s"),
        ({"overrides": {"nosuch.key": 1}}, "unknown setting nosuch.key"),
        ({"overrides": {"storage.on_conflict": "newest"}}, "storage.on_conflict"),
        ({"overrides": {"dicom.receive_processes": 0}}, "dicom.receive_processes"),
        ({"overrides": {"storage.quarantine_max_entries": 0}}, "quarantine_max_entries"),
        ({"overrides": {"dicom.max_dataset_bytes": "-1"}}, "not a size"),
        ({"overrides": {"tls.ae_certificates": {"PACS": "CN=x"}}}, "tls.ae_certificates"),
        ({"overrides": {"results.tls_cert": "/x.pem"}}, "results.tls_cert"),
        ({"overrides": {"results.tls_ca": "/nonexistent.pem"}}, "results.tls_ca"),
    ],
)
def test_bad_settings_name_the_setting(kwargs, message):
    kwargs.setdefault("env", {})
    with pytest.raises(SettingsError, match=message.replace("\\", "\\\\")):
        load_settings(**kwargs)


def test_bad_config_files_are_one_clear_error(tmp_path):
    with pytest.raises(SettingsError, match="config file not found"):
        load_settings(tmp_path / "missing.toml", env={})
    broken = tmp_path / "broken.toml"
    broken.write_text("[dicom\nport = 1\n")
    with pytest.raises(SettingsError, match=r"broken\.toml"):
        load_settings(broken, env={})
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[mqt]\nhost = 1\n")
    with pytest.raises(SettingsError, match=r"unknown section \[mqt\]"):
        load_settings(unknown, env={})


def test_sizes():
    assert parse_size(1024) == 1024
    assert parse_size("500MB") == 500 * 10**6
    assert parse_size("2GiB") == 2 * 2**30
    assert parse_size("1.5G") == 1_500_000_000
    assert parse_size("64k") == 64_000
    with pytest.raises(SettingsError):
        parse_size("12 parsecs")


def test_a_new_section_is_one_dataclass_and_one_field(tmp_path):
    """How issue 5 added [mqtt]/[training]/[twin]: the loader needs no other change."""
    from dataclasses import dataclass, field, make_dataclass

    from ftlct.agent.settings import ENV_PREFIX
    from ftlct.protocol.settings import load_settings as load_typed_settings

    @dataclass
    class ExtraSettings:
        interval_s: float = 30.0
        enabled: bool = True

    Extended = make_dataclass(
        "Extended",
        [("extra", ExtraSettings, field(default_factory=ExtraSettings))],
        bases=(AgentSettings,),
    )
    config = tmp_path / "agent.toml"
    config.write_text("[extra]\nenabled = false\n")
    env = {"FTLCT_AGENT_EXTRA_INTERVAL_S": "5"}
    settings = load_typed_settings(Extended, config, ENV_PREFIX, env)
    assert settings.extra.interval_s == 5.0
    assert settings.extra.enabled is False


def test_ae_certificates_name_a_subject_or_a_fingerprint(tmp_path):
    for name in ("cert", "key", "ca"):
        (tmp_path / f"{name}.pem").write_text("x")
    tls = {
        "tls.cert": tmp_path / "cert.pem",
        "tls.key": tmp_path / "key.pem",
        "tls.ca": tmp_path / "ca.pem",
        "tls.require_client_cert": True,
    }
    good = {"PACS": "CN=pacs.example", "CT1": "sha256:" + "ab" * 32}
    env = {
        "FTLCT_AGENT_TLS_AE_CERTIFICATES": '{PACS = "CN=pacs.example", CT1 = "sha256:'
        + "ab" * 32
        + '"}'
    }
    assert load_settings(env=env, overrides=tls).tls.ae_certificates == good
    for bad in ({"PACS": "pacs.example"}, {"PACS": "sha256:abc"}, {"A" * 17: "CN=x"}):
        with pytest.raises(SettingsError, match=r"tls\.ae_certificates"):
            load_settings(env={}, overrides={**tls, "tls.ae_certificates": bad})
