"""Metering service settings, read once from the environment."""

from __future__ import annotations

from typing import Literal

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from xrouter.adapters.catalog import CatalogError
from xrouter.common.settings import Port, Settings, SettingsError, env
from xrouter.common.tls import TlsFiles
from xrouter.metering.auth import parse_key_hashes
from xrouter.metering.catalog_models import CatalogModels

SUPPORTED_BACKENDS = ("sqlite", "postgresql")
LOOPBACK = ("127.0.0.1", "::1", "localhost")


class MeteringSettings(Settings):
    """Where the metering service listens and which database holds its ledger."""

    database_url: str = env(
        "XROUTER_METERING_DATABASE_URL",
        help="a SQLAlchemy URL such as postgresql+psycopg://user@host/db or sqlite:///path")
    host: str = env("XROUTER_METERING_HOST", "127.0.0.1", min_length=1)
    port: Port = env("XROUTER_METERING_PORT", 50053)
    # How long an Authorize reservation holds budget if its request never settles (a crashed router).
    reservation_ttl_s: float = env("XROUTER_METERING_RESERVATION_TTL_S", 300.0, gt=0)
    grace_s: float = env("XROUTER_METERING_GRACE_S", 5.0, ge=0, allow_inf_nan=False)
    metrics_port: Port = env("XROUTER_METERING_METRICS_PORT", 0)
    # "required": every call carries an API key (see auth.py). "off" trusts every caller, and is
    # allowed only on a loopback address (the single-machine embedded default).
    auth: Literal["off", "required"] = env("XROUTER_METERING_AUTH", "off")
    # SHA-256 hex digests (comma-separated, for rotation) of the router's and the admins' keys.
    service_key_sha256: str = env("XROUTER_METERING_SERVICE_KEY_SHA256", "")
    admin_key_sha256: str = env("XROUTER_METERING_ADMIN_KEY_SHA256", "")
    # Where Record/Settle go while the database is down; empty: they fail with UNAVAILABLE instead.
    spool_dir: str = env("XROUTER_METERING_SPOOL_DIR", "")
    spool_max_entries: int = env("XROUTER_METERING_SPOOL_MAX_ENTRIES", 100_000, gt=0)
    # "memory": Authorize checks budgets against running totals kept in memory (one metering
    # replica per ledger; see totals.py for the bound). "database": the serialised check in the
    # database, exact across any number of replicas.
    budgets: Literal["memory", "database"] = env("XROUTER_METERING_BUDGETS", "memory")
    # How often the database is pinged (health, spool replay).
    health_interval_s: float = env("XROUTER_METERING_HEALTH_INTERVAL_S", 1.0, gt=0)
    # TLS (common/tls.py): this service's certificate and key, and the CA its peers' certificates
    # are checked against. All empty: plaintext (the local default).
    tls_cert_file: str = env("XROUTER_METERING_TLS_CERT_FILE", "")
    tls_key_file: str = env("XROUTER_METERING_TLS_KEY_FILE", "")
    tls_ca_file: str = env("XROUTER_METERING_TLS_CA_FILE", "")
    # A plaintext port serving only grpc.health.v1 (0: none), for kubelet probes, which cannot
    # speak TLS to the service port.
    health_port: Port = env("XROUTER_METERING_HEALTH_PORT", 0)
    # The model catalog the adapters serve (catalog_models.py): SetBudget then refuses a model it
    # does not list. Empty: any model name is accepted, and a misspelt one matches no call.
    catalog: str = env("XROUTER_METERING_CATALOG", "")

    def tls(self) -> TlsFiles:
        """The TLS files of this service (all empty: plaintext)."""
        return TlsFiles(self.tls_cert_file, self.tls_key_file, self.tls_ca_file)

    def validate(self) -> None:
        """Raise :class:`SettingsError` naming the variable of the first bad value."""
        self.tls().validate("XROUTER_METERING")
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
        if self.auth == "off" and self.host not in LOOPBACK:
            raise SettingsError(
                f"XROUTER_METERING_AUTH=off is allowed only on a loopback address, but XROUTER_METERING_HOST is "
                f"{self.host!r}: set XROUTER_METERING_AUTH=required and XROUTER_METERING_SERVICE_KEY_SHA256")
        if self.catalog:
            try:
                CatalogModels(self.catalog)()
            except CatalogError as error:
                raise SettingsError(f"XROUTER_METERING_CATALOG: {error}") from None
        service, _ = self.key_hashes()
        if self.auth == "required" and not service:
            raise SettingsError("XROUTER_METERING_AUTH=required needs XROUTER_METERING_SERVICE_KEY_SHA256 "
                                "(the SHA-256 of the key the router sends) or the router cannot write the ledger")

    def key_hashes(self) -> tuple[frozenset[str], frozenset[str]]:
        """(service key hashes, admin key hashes); SettingsError names a malformed variable."""
        try:
            return (parse_key_hashes(self.service_key_sha256, "XROUTER_METERING_SERVICE_KEY_SHA256"),
                    parse_key_hashes(self.admin_key_sha256, "XROUTER_METERING_ADMIN_KEY_SHA256"))
        except ValueError as error:
            raise SettingsError(str(error)) from None
