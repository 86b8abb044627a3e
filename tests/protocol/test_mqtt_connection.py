import pytest

from ftlct.protocol.mqtt_connection import BrokerUrl, parse_broker_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://127.0.0.1:1884", BrokerUrl("127.0.0.1", 1884, False)),
        ("mqtts://broker.example:8884", BrokerUrl("broker.example", 8884, True)),
        ("mqtt://localhost", BrokerUrl("localhost", 1883, False)),
        ("mqtts://localhost", BrokerUrl("localhost", 8883, True)),
    ],
)
def test_broker_urls_parse(url, expected):
    assert parse_broker_url(url) == expected


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("tcp://h:1", "mqtt:// or mqtts://"),
        ("mqtt://user:pw@h:1", "not the URL"),
        ("mqtt://h:1/path", "HOST:PORT"),
        ("mqtt://h:99999", "bad port"),
        ("h:1883", "mqtt:// or mqtts://"),
    ],
)
def test_bad_broker_urls_say_why(url, needle):
    with pytest.raises(ValueError, match=needle):
        parse_broker_url(url)
