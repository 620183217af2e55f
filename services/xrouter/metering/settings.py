"""Metering service settings, read once from the environment."""

from __future__ import annotations

import dataclasses

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from xrouter.common.settings import SettingsError, env

SUPPORTED_BACKENDS = ("sqlite", "postgresql")


@dataclasses.dataclass(frozen=True)
class MeteringSettings:
    """Where the metering service listens and which database holds its ledger."""

    database_url: str = env(
        "XROUTER_METERING_DATABASE_URL",
        help="a SQLAlchemy URL such as postgresql+psycopg://user@host/db or sqlite:///path")
    host: str = env("XROUTER_METERING_HOST", "127.0.0.1")
    port: int = env("XROUTER_METERING_PORT", 50053)
    # How long an Authorize reservation holds budget if its request never settles (a crashed router).
    reservation_ttl_s: float = env("XROUTER_METERING_RESERVATION_TTL_S", 300.0)
    grace_s: float = env("XROUTER_METERING_GRACE_S", 5.0)
    metrics_port: int = env("XROUTER_METERING_METRICS_PORT", 0)

    def validate(self) -> None:
        """Raise :class:`SettingsError` naming the variable of the first bad value."""
        try:
            backend = make_url(self.database_url).get_backend_name()
        except ArgumentError:
            # Never echo the raw value: it may carry a password.
            raise SettingsError(
                "XROUTER_METERING_DATABASE_URL is not a SQLAlchemy URL: set it to e.g. "
                "postgresql+psycopg://user@host/db or sqlite:///path") from None
        if backend not in SUPPORTED_BACKENDS:
            raise SettingsError(f"XROUTER_METERING_DATABASE_URL: backend {backend!r} is not supported "
                                f"(use one of {', '.join(SUPPORTED_BACKENDS)})")
        if not self.host:
            raise SettingsError("XROUTER_METERING_HOST must not be empty")
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"XROUTER_METERING_PORT must be 0..65535, got {self.port}")
        if not 0 <= self.metrics_port <= 65535:
            raise SettingsError(f"XROUTER_METERING_METRICS_PORT must be 0..65535, got {self.metrics_port}")
        if not self.reservation_ttl_s > 0:
            raise SettingsError(
                f"XROUTER_METERING_RESERVATION_TTL_S must be positive, got {self.reservation_ttl_s}")
        if not self.grace_s >= 0:
            raise SettingsError(f"XROUTER_METERING_GRACE_S must not be negative, got {self.grace_s}")
