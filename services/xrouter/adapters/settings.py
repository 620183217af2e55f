"""Adapter service settings, read once from the environment."""

from __future__ import annotations

import pathlib

from xrouter.common.outcomes import DATA_DIR, ROUTERBENCH
from xrouter.common.settings import Port, Settings, SettingsError, env
from xrouter.common.tls import TlsFiles

DEFAULT_CATALOG = DATA_DIR / "catalog.routerbench.yaml"


class AdapterSettings(Settings):
    host: str = env("XROUTER_ADAPTERS_HOST", "127.0.0.1")
    port: Port = env("XROUTER_ADAPTERS_PORT", 50052)
    catalog_path: str = env("XROUTER_ADAPTERS_CATALOG", str(DEFAULT_CATALOG),
                            help="the path of the model catalog YAML")
    # name=path pairs of outcome sets replay models may name; "routerbench" is bundled.
    replay_datasets: str = env("XROUTER_ADAPTERS_REPLAY_DATASETS", f"routerbench={ROUTERBENCH}")
    # Local models are converted once (GGUF → safetensors) into this folder; later starts load from it.
    # Empty: ~/.cache/xrouter (resolved at start-up, not import).
    model_cache_dir: str = env("XROUTER_ADAPTERS_MODEL_CACHE", "",
                               help="a writable folder for converted local model weights")
    grace_s: float = env("XROUTER_ADAPTERS_GRACE_S", 5.0, ge=0, allow_inf_nan=False)
    metrics_port: Port = env("XROUTER_ADAPTERS_METRICS_PORT", 0)
    # TLS (common/tls.py): this service's certificate and key, and the CA its peers' certificates
    # are checked against. All empty: plaintext (the local default).
    tls_cert_file: str = env("XROUTER_ADAPTERS_TLS_CERT_FILE", "")
    tls_key_file: str = env("XROUTER_ADAPTERS_TLS_KEY_FILE", "")
    tls_ca_file: str = env("XROUTER_ADAPTERS_TLS_CA_FILE", "")
    # A plaintext port serving only grpc.health.v1 (0: none), for kubelet probes, which cannot
    # speak TLS to the service port.
    health_port: Port = env("XROUTER_ADAPTERS_HEALTH_PORT", 0)

    def datasets(self) -> dict[str, pathlib.Path]:
        pairs: dict[str, pathlib.Path] = {}
        for item in filter(None, (p.strip() for p in self.replay_datasets.split(","))):
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                raise SettingsError(f"XROUTER_ADAPTERS_REPLAY_DATASETS: {item!r} is not name=path")
            pairs[name] = pathlib.Path(path)
        return pairs

    def model_cache(self) -> pathlib.Path:
        return pathlib.Path(self.model_cache_dir or pathlib.Path.home() / ".cache" / "xrouter")

    def tls(self) -> TlsFiles:
        """The TLS files of this service (all empty: plaintext)."""
        return TlsFiles(self.tls_cert_file, self.tls_key_file, self.tls_ca_file)

    def validate(self) -> None:
        self.tls().validate("XROUTER_ADAPTERS")
        if not pathlib.Path(self.catalog_path).is_file():
            raise SettingsError(f"XROUTER_ADAPTERS_CATALOG: no file at {self.catalog_path}")
        for name, path in self.datasets().items():
            if not path.is_file():
                raise SettingsError(f"XROUTER_ADAPTERS_REPLAY_DATASETS: {name}: no file at {path}")
