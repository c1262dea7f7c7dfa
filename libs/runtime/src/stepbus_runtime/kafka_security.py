"""How every Kafka client of a process connects: PLAINTEXT, TLS, SASL or both (``STEPBUS_KAFKA_*``).

A managed Kafka needs TLS and SASL, so every producer, consumer and admin client the runtime
and the services build takes ``**kafka_options()``: the security settings read once from the
environment, the same for every client of the process (what the Helm chart renders from
``kafka.tls`` and ``kafka.sasl``):

=================================== ==============================================================
``STEPBUS_KAFKA_SECURITY_PROTOCOL``  ``PLAINTEXT`` (default), ``SSL``, ``SASL_PLAINTEXT``,
                                     ``SASL_SSL``
``STEPBUS_KAFKA_SSL_CAFILE``         CA bundle to verify the brokers (default: the system's)
``STEPBUS_KAFKA_SSL_CERTFILE``,      client certificate and key, for mutual TLS
``STEPBUS_KAFKA_SSL_KEYFILE``
``STEPBUS_KAFKA_SASL_MECHANISM``     ``PLAIN``, ``SCRAM-SHA-256`` or ``SCRAM-SHA-512``
``STEPBUS_KAFKA_SASL_USERNAME``,     the SASL credentials (the password is a secret: never logged)
``STEPBUS_KAFKA_SASL_PASSWORD``
=================================== ==============================================================

A setting that does not fit (SASL without credentials, a certificate without its key, a file
that cannot be read) fails the first client with ``KafkaSecurityError``, which says which
variable to fix.
"""

from __future__ import annotations

import functools
import ssl
from typing import Any, Literal

from aiokafka.helpers import create_ssl_context
from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["KafkaSecurity", "KafkaSecurityError", "kafka_options"]


class KafkaSecurityError(ValueError):
    """The ``STEPBUS_KAFKA_*`` settings do not make a working connection setup."""


class KafkaSecurity(BaseSettings):
    """The security settings of a process's Kafka clients."""

    model_config = SettingsConfigDict(env_prefix="STEPBUS_KAFKA_", extra="ignore")

    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="How clients talk to the brokers."
    )
    ssl_cafile: str | None = Field(
        default=None, description="CA bundle that signs the brokers' certificates."
    )
    ssl_certfile: str | None = Field(default=None, description="Client certificate (mutual TLS).")
    ssl_keyfile: str | None = Field(default=None, description="Client key (mutual TLS).")
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        default="PLAIN", description="SASL mechanism."
    )
    sasl_username: str | None = Field(default=None, description="SASL user.")
    sasl_password: SecretStr | None = Field(default=None, description="SASL password.")

    def options(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka's producer, consumer and admin client.

        Raises:
            KafkaSecurityError: The settings are incomplete or a file cannot be used.
        """
        protocol = self.security_protocol
        if protocol == "PLAINTEXT":
            return {}
        options: dict[str, Any] = {"security_protocol": protocol}
        if protocol in ("SSL", "SASL_SSL"):
            options["ssl_context"] = self._ssl_context()
        if protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
            if not self.sasl_username or self.sasl_password is None:
                raise KafkaSecurityError(
                    f"STEPBUS_KAFKA_SECURITY_PROTOCOL={protocol} needs STEPBUS_KAFKA_SASL_USERNAME "
                    "and STEPBUS_KAFKA_SASL_PASSWORD"
                )
            options.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password.get_secret_value(),
            )
        return options

    def _ssl_context(self) -> ssl.SSLContext:
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise KafkaSecurityError(
                "mutual TLS needs both STEPBUS_KAFKA_SSL_CERTFILE and STEPBUS_KAFKA_SSL_KEYFILE"
            )
        try:
            context: ssl.SSLContext = create_ssl_context(
                cafile=self.ssl_cafile or None,
                certfile=self.ssl_certfile or None,
                keyfile=self.ssl_keyfile or None,
            )
            return context
        except (OSError, ssl.SSLError) as exc:
            raise KafkaSecurityError(
                f"cannot set up TLS for Kafka from STEPBUS_KAFKA_SSL_*: {exc}"
            ) from None


@functools.cache
def kafka_options() -> dict[str, Any]:
    """The security options of every Kafka client of this process (``{}`` for PLAINTEXT),
    read from the environment once.

    Raises:
        KafkaSecurityError: The ``STEPBUS_KAFKA_*`` settings are invalid or incomplete.
    """
    try:
        security = KafkaSecurity()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "STEPBUS_KAFKA_" + ".".join(map(str, first["loc"])).upper()
        raise KafkaSecurityError(f"{name}: {first['msg']}") from None
    return security.options()
