"""TLS for the gRPC servers and the channels between services, from PEM files named in settings.

Each service reads ``XROUTER_<SERVICE>_TLS_CERT_FILE`` / ``_TLS_KEY_FILE`` / ``_TLS_CA_FILE``. With a
certificate and key, a server listens with TLS; with a CA as well, an internal service requires
and verifies client certificates (mutual TLS), while the router's public port keeps authenticating
callers by API key (its CA verifies the services it calls, and its certificate is its client
certificate towards them). All empty: plaintext, the local default. The chart mounts these from a
Secret (cert-manager's ``tls.crt`` / ``tls.key`` / ``ca.crt`` layout).
"""

from __future__ import annotations

import dataclasses
import pathlib

import grpc

from xrouter.common.settings import SettingsError


@dataclasses.dataclass(frozen=True)
class TlsFiles:
    """PEM paths; empty strings mean unset. ``server_name`` overrides the name checked in the
    servers' certificates (when targets are addressed by IP or by another name)."""

    cert_file: str = ""
    key_file: str = ""
    ca_file: str = ""
    server_name: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file or self.key_file or self.ca_file)

    def validate(self, prefix: str) -> None:
        """SettingsError naming the ``<prefix>_TLS_*`` variable that is inconsistent or unreadable."""
        if bool(self.cert_file) != bool(self.key_file):
            raise SettingsError(f"{prefix}_TLS_CERT_FILE and {prefix}_TLS_KEY_FILE go together: set both or neither")
        for suffix, path in (("CERT_FILE", self.cert_file), ("KEY_FILE", self.key_file), ("CA_FILE", self.ca_file)):
            if path and not pathlib.Path(path).is_file():
                raise SettingsError(f"{prefix}_TLS_{suffix}: no readable file at {path!r}")


def _read(path: str) -> bytes | None:
    return pathlib.Path(path).read_bytes() if path else None


def server_credentials(tls: TlsFiles, require_client_cert: bool) -> grpc.ServerCredentials:
    """Credentials for a TLS listener; client certificates are required (and checked against the
    CA) when ``require_client_cert`` and a CA is set."""
    if not (tls.cert_file and tls.key_file):
        raise SettingsError("a TLS server needs a certificate and a key (…_TLS_CERT_FILE, …_TLS_KEY_FILE)")
    mutual = require_client_cert and bool(tls.ca_file)
    return grpc.ssl_server_credentials(
        [(_read(tls.key_file), _read(tls.cert_file))], root_certificates=_read(tls.ca_file) if mutual else None,
        require_client_auth=mutual)


def channel_credentials(tls: TlsFiles) -> grpc.ChannelCredentials:
    """Credentials for a channel to a TLS server: trust the CA (the system roots when unset) and
    present this service's certificate when it has one (mutual TLS)."""
    return grpc.ssl_channel_credentials(root_certificates=_read(tls.ca_file), private_key=_read(tls.key_file),
                                        certificate_chain=_read(tls.cert_file))


def channel_options(tls: TlsFiles) -> list[tuple[str, str]]:
    """Channel options: the expected server name, when overridden."""
    return [("grpc.ssl_target_name_override", tls.server_name)] if tls.server_name else []
