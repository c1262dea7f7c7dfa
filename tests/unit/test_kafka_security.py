"""``STEPBUS_KAFKA_*``: the options every Kafka client of a process gets, and the clear errors
of settings that cannot work."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from stepbus_runtime.kafka_security import KafkaSecurity, KafkaSecurityError, kafka_options


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for field in KafkaSecurity.model_fields:
        monkeypatch.delenv(f"STEPBUS_KAFKA_{field.upper()}", raising=False)
    kafka_options.cache_clear()
    yield monkeypatch
    kafka_options.cache_clear()


def test_plaintext_is_the_default_and_adds_nothing(env: pytest.MonkeyPatch) -> None:
    assert kafka_options() == {}


def test_sasl_over_tls_gives_the_mechanism_the_credentials_and_a_verifying_context(
    env: pytest.MonkeyPatch,
) -> None:
    env.setenv("STEPBUS_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    env.setenv("STEPBUS_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    env.setenv("STEPBUS_KAFKA_SASL_USERNAME", "planner")
    env.setenv("STEPBUS_KAFKA_SASL_PASSWORD", "s3cret")
    options = kafka_options()
    context = options.pop("ssl_context")
    assert options == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "planner",
        "sasl_plain_password": "s3cret",
    }
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert kafka_options() is kafka_options()  # read once per process


def test_the_password_never_shows_in_the_settings_repr() -> None:
    security = KafkaSecurity(security_protocol="SASL_PLAINTEXT", sasl_password="s3cret")
    assert "s3cret" not in repr(security)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"security_protocol": "SASL_PLAINTEXT", "sasl_username": "planner"},
            "needs STEPBUS_KAFKA_SASL_USERNAME and STEPBUS_KAFKA_SASL_PASSWORD",
        ),
        (
            {"security_protocol": "SSL", "ssl_certfile": "/etc/client.crt"},
            "needs both STEPBUS_KAFKA_SSL_CERTFILE and STEPBUS_KAFKA_SSL_KEYFILE",
        ),
        (
            {"security_protocol": "SSL", "ssl_cafile": "/nonexistent/ca.crt"},
            "cannot set up TLS for Kafka from STEPBUS_KAFKA_SSL_*",
        ),
    ],
)
def test_settings_that_cannot_work_say_which_variable_to_fix(
    settings: dict[str, str], message: str
) -> None:
    with pytest.raises(KafkaSecurityError, match=message.replace("*", r"\*")):
        KafkaSecurity(**settings).options()  # type: ignore[arg-type]


def test_an_unknown_protocol_names_the_variable(env: pytest.MonkeyPatch) -> None:
    env.setenv("STEPBUS_KAFKA_SECURITY_PROTOCOL", "KERBEROS")
    with pytest.raises(KafkaSecurityError, match="STEPBUS_KAFKA_SECURITY_PROTOCOL"):
        kafka_options()


def test_a_ca_file_is_loaded(tmp_path: Path) -> None:
    bundle = Path(ssl.get_default_verify_paths().cafile or "")
    if not bundle.is_file():
        pytest.skip("no system CA bundle to load")
    context = KafkaSecurity(security_protocol="SSL", ssl_cafile=str(bundle)).options()
    assert context["ssl_context"].cert_store_stats()["x509_ca"] > 0
