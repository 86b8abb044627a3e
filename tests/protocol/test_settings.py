"""Typed settings: defaults < TOML < environment < flags, and errors that name the culprit."""

from __future__ import annotations

import pytest

from ftlct.cloud.settings import load_cloud_settings
from ftlct.protocol.settings import SettingsError


def test_defaults_run_without_any_file():
    settings = load_cloud_settings(None, env={})
    assert settings.broker == "mqtt://127.0.0.1:1883" and settings.strategy == "ftl"
    assert settings.mqtt.username == "" and settings.limits.max_delta_norm == 100.0
    assert settings.mqtt_client_id == "ftl-cloud-default"


def test_toml_then_env_then_flags(tmp_path):
    config = tmp_path / "cloud.toml"
    config.write_text(
        'federation = "ct"\nmin_sites = 4\nround_timeout = 30\n'
        '[mqtt]\nusername = "cloud"\nkeepalive = 10\n'
        "[strategy_params]\neps1 = 0.2\n"
        "[training]\nlr = 0.05\n"
    )
    env = {
        "FTLCT_CLOUD_MIN_SITES": "5",
        "FTLCT_CLOUD_MQTT_PASSWORD": "s3cret",
        "FTLCT_CLOUD_DEV_TRUST_ON_FIRST_USE": "yes",
    }
    settings = load_cloud_settings(config, env=env, min_sites=None, round_timeout=12.5)
    assert settings.federation == "ct"
    assert settings.min_sites == 5  # env over file
    assert settings.round_timeout == 12.5  # flag over file
    assert settings.mqtt.username == "cloud" and settings.mqtt.password == "s3cret"
    assert settings.mqtt.keepalive == 10 and settings.dev_trust_on_first_use is True
    assert settings.strategy_params == {"eps1": 0.2} and settings.training == {"lr": 0.05}


def test_password_file_is_read_at_connect(tmp_path):
    (tmp_path / "pw").write_text("from-file\n")
    settings = load_cloud_settings(
        None, env={"FTLCT_CLOUD_MQTT_PASSWORD_FILE": str(tmp_path / "pw")}
    )
    assert settings.mqtt.resolved_password() == "from-file"


@pytest.mark.parametrize(
    ("text", "env", "needle"),
    [
        ("min_sites = 2\nrond = 1\n", {}, "unknown setting 'rond'"),
        ("[mqtt]\nuser = 'x'\n", {}, "unknown setting 'user'"),
        ("min_sites = 'two'\n", {}, "min_sites"),
        ("min_sites = 1.5\n", {}, "min_sites"),
        ("mqtt = 3\n", {}, "[mqtt] must be a table"),
        ("", {"FTLCT_CLOUD_ROUND_TIMEOUT": "soon"}, "FTLCT_CLOUD_ROUND_TIMEOUT"),
        ("", {"FTLCT_CLOUD_DEV_TRUST_ON_FIRST_USE": "maybe"}, "not a boolean"),
        ("not toml at all = = =", {}, "cloud.toml"),
    ],
)
def test_bad_settings_name_the_culprit(tmp_path, text, env, needle):
    config = tmp_path / "cloud.toml"
    config.write_text(text)
    with pytest.raises(SettingsError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        load_cloud_settings(config, env=env)
