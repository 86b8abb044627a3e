"""The ``[mqtt]``, ``[training]``, ``[privacy]`` and ``[twin]`` settings: file, environment, checks."""

from __future__ import annotations

import pytest

from ftlct.agent.settings import SettingsError, load_settings
from ftlct.agent.training.recipe import recipe_for


def test_tables_and_environment_fill_the_new_sections(tmp_path):
    config = tmp_path / "agent.toml"
    config.write_text(
        "[mqtt]\nusername = 'site-a'\npassword_file = '/etc/ftl/site-a.pw'\nca_file = 'ca.crt'\n"
        "[training]\nmin_samples = 50\nfedprox_mu = 0.01\ngate_max_f1_drop = 0.02\n"
        "[privacy]\nenabled = true\nnoise_multiplier = 1.5\nepsilon_limit = 8\n"
        "[twin]\nperiod_s = 30\n"
    )
    env = {"FTLCT_AGENT_MQTT_KEEPALIVE": "15", "FTLCT_AGENT_TRAINING_CODEC": "int8"}
    s = load_settings(config, env=env)
    assert (s.mqtt.username, s.mqtt.password_file, s.mqtt.keepalive) == (
        "site-a",
        "/etc/ftl/site-a.pw",
        15,
    )
    assert (s.training.min_samples, s.training.fedprox_mu, s.training.codec) == (50, 0.01, "int8")
    assert s.privacy.enabled and s.privacy.epsilon_limit == 8.0 and s.twin.period_s == 30.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"federation.broker": "mqtt://b:1883", "federation.site": "a"},
            "needs federation.name, federation.cloud_key",
        ),
        ({"federation.site": "a/b"}, "federation.site"),
        ({"training.optimizer": "lbfgs"}, "training.optimizer"),
        ({"training.codec": "zip"}, "training.codec"),
        ({"training.val_fraction": 1.0}, "training.val_fraction"),
        ({"privacy.noise_multiplier": 0}, "privacy.noise_multiplier"),
        ({"privacy.delta": 1.5}, "privacy.delta"),
        ({"privacy.sample_count_bucket": 0}, "privacy.sample_count_bucket"),
        ({"training.max_duration_s": 0}, "training.max_duration_s"),
        ({"training.min_lr": 2.0}, "training.min_lr"),
        ({"training.max_batch_size": 0}, "training.max_batch_size"),
        ({"federation.resend_initial_s": 0}, "federation.resend_initial_s"),
        ({"federation.resend_factor": 0.5}, "federation.resend_factor"),
        ({"federation.resend_max_s": 1}, "federation.resend_max_s"),
    ],
)
def test_bad_federation_settings_name_the_setting(overrides, message):
    with pytest.raises(SettingsError, match=message):
        load_settings(env={}, overrides=overrides)


def test_the_round_recipe_wins_unless_told_otherwise():
    training = load_settings(env={}).training
    announced = {
        "local_epochs": 2,
        "lr": 0.01,
        "codec": "int8",
        "max_delta_norm": 5,
    }
    recipe = recipe_for(training, announced)
    assert (recipe.epochs, recipe.lr, recipe.codec, recipe.max_delta_norm) == (2, 0.01, "int8", 5.0)
    assert recipe.batch_size == training.batch_size  # not announced: the local value
    training.follow_round = False
    local = recipe_for(training, announced)
    assert (local.epochs, local.codec, local.max_delta_norm) == (
        training.epochs,
        training.codec,
        5.0,
    )
