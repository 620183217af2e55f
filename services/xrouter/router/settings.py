"""Router service settings, read once from the environment."""

from __future__ import annotations

import re

from xrouter.common.settings import Port, Settings, SettingsError, env
from xrouter.common.tls import TlsFiles
from xrouter.router.core import Limits
from xrouter.router.exploration import ExplorationRates, check_epsilon, parse_tenants
from xrouter.router.lm.charge import (DEFAULT_INPUT_USD_PER_MTOK, DEFAULT_MODEL_ID, DEFAULT_OUTPUT_USD_PER_MTOK,
                                      RouterLMPrice)
from xrouter.router.policy_store import LMGeneration


class RouterSettings(Settings):
    adapters_target: str = env("XROUTER_ROUTER_ADAPTERS_TARGET", help="host:port of the adapters service")
    metering_target: str = env("XROUTER_ROUTER_METERING_TARGET", help="host:port of the metering service")
    # The router's service key for metering (a secret; metering keeps only its SHA-256). Empty: none
    # sent, which a metering service running with XROUTER_METERING_AUTH=required refuses.
    metering_api_key: str = env("XROUTER_ROUTER_METERING_API_KEY", "")
    # Empty: no online scoring (requests that carry a reference are then refused).
    reward_target: str = env("XROUTER_ROUTER_REWARD_TARGET", "")
    host: str = env("XROUTER_ROUTER_HOST", "127.0.0.1")
    port: Port = env("XROUTER_ROUTER_PORT", 50051)
    http_port: Port = env("XROUTER_ROUTER_HTTP_PORT", 8080)  # OpenAI-compatible face; 0 disables
    policy: str = env("XROUTER_ROUTER_POLICY", "cascade")
    default_max_turns: int = env("XROUTER_ROUTER_DEFAULT_MAX_TURNS", 3)
    max_turns: int = env("XROUTER_ROUTER_MAX_TURNS", 8)
    max_prompt_chars: int = env("XROUTER_ROUTER_MAX_PROMPT_CHARS", 200_000)
    default_cost_lambda: float = env("XROUTER_ROUTER_DEFAULT_COST_LAMBDA", 1.0, ge=0)
    default_tenant: str = env("XROUTER_ROUTER_DEFAULT_TENANT", "default")
    request_timeout_s: float = env("XROUTER_ROUTER_REQUEST_TIMEOUT_S", 60.0, gt=0)
    call_timeout_s: float = env("XROUTER_ROUTER_CALL_TIMEOUT_S", 30.0, gt=0)
    startup_timeout_s: float = env("XROUTER_ROUTER_STARTUP_TIMEOUT_S", 30.0)
    grace_s: float = env("XROUTER_ROUTER_GRACE_S", 5.0)
    # The settlement journal (router/journal.py): a request's accounting is made durable here and
    # its answer goes out without waiting for metering. Empty: each answer waits for metering's
    # commit. Must outlive the pod (a PersistentVolume). One subdirectory per router process.
    journal_dir: str = env("XROUTER_ROUTER_JOURNAL_DIR", "")
    journal_max_pending: int = env("XROUTER_ROUTER_JOURNAL_MAX_PENDING", 100_000, gt=0)
    metrics_port: Port = env("XROUTER_ROUTER_METRICS_PORT", 0)
    # The policy pointer: a ConfigMap whose `policy_key` names the checkpoint to serve (the training
    # Job patches it, `xrouter publish` too). Empty name: no watch (LoadPolicy still works).
    policy_configmap: str = env("XROUTER_ROUTER_POLICY_CONFIGMAP", "")
    policy_namespace: str = env("XROUTER_ROUTER_POLICY_NAMESPACE", "")  # empty: the pod's own namespace
    policy_key: str = env("XROUTER_ROUTER_POLICY_KEY", "checkpoint")
    # An LM checkpoint's tokens from an OpenAI-compatible completions server (vLLM on a GPU,
    # http(s)://host:port/v1) instead of transformers in the router process; empty: in process.
    # The name the server serves it under; empty: the checkpoint's path (vLLM's name for
    # `--model DIR`, so a server holding other weights is refused); "{version}" is replaced by the
    # checkpoint's version (for `--served-model-name VERSION`).
    lm_generation_url: str = env("XROUTER_ROUTER_LM_GENERATION_URL", "")
    lm_served_model: str = env("XROUTER_ROUTER_LM_SERVED_MODEL", "")
    # What an LM policy's own tokens cost: each decision turn is a priced call in the ledger under
    # this model id (router/lm/charge.py; the defaults are a stated assumption for a self-hosted 7B).
    lm_model_id: str = env("XROUTER_ROUTER_LM_MODEL_ID", DEFAULT_MODEL_ID)
    lm_input_usd_per_mtok: float = env("XROUTER_ROUTER_LM_INPUT_USD_PER_MTOK", DEFAULT_INPUT_USD_PER_MTOK)
    lm_output_usd_per_mtok: float = env("XROUTER_ROUTER_LM_OUTPUT_USD_PER_MTOK", DEFAULT_OUTPUT_USD_PER_MTOK)
    # TLS (common/tls.py): this service's certificate and key, and the CA its peers' certificates
    # are checked against. All empty: plaintext (the local default).
    tls_cert_file: str = env("XROUTER_ROUTER_TLS_CERT_FILE", "")
    tls_key_file: str = env("XROUTER_ROUTER_TLS_KEY_FILE", "")
    tls_ca_file: str = env("XROUTER_ROUTER_TLS_CA_FILE", "")
    # A plaintext port serving only grpc.health.v1 (0: none), for kubelet probes, which cannot
    # speak TLS to the service port.
    health_port: Port = env("XROUTER_ROUTER_HEALTH_PORT", 0)
    # The name expected in the other services' certificates when it is not the target's host.
    tls_server_name: str = env("XROUTER_ROUTER_TLS_SERVER_NAME", "")
    # How long a verified API key is trusted without asking metering again: the bound on how late
    # a revocation takes effect (router/auth.py).
    key_cache_s: float = env("XROUTER_ROUTER_KEY_CACHE_S", 30.0, ge=0, le=3600,
                             help="seconds a revoked key may still work, within [0, 3600]")
    # ε-exploration of the first call (router/exploration.py), for the compact policy only: the rate
    # for every tenant (0: none, the default), and per-tenant overrides ("acme=0.05,globex=0.1").
    # Each explored request records the behaviour probability of its first call with its settlement.
    exploration_epsilon: float = env("XROUTER_ROUTER_EXPLORATION_EPSILON", 0.0)
    exploration_tenants: str = env("XROUTER_ROUTER_EXPLORATION_TENANTS", "")
    # How long metering's "no hard budget applies" admits router-made request ids of that tenant and
    # pool without an Authorize round trip: a budget set on a tenant without one is enforced at most
    # this late (router/unbudgeted.py). 0: ask metering for every request.
    unbudgeted_admission_s: float = env("XROUTER_ROUTER_UNBUDGETED_ADMISSION_S", 5.0, ge=0, le=60,
                                        help="seconds within [0, 60]")
    # Router processes sharing the ports with SO_REUSEPORT (router/processes.py): one per core.
    processes: int = env("XROUTER_ROUTER_PROCESSES", 1, ge=1)

    def limits(self) -> Limits:
        return Limits(self.default_max_turns, self.max_turns, self.max_prompt_chars, self.default_cost_lambda,
                      self.default_tenant, self.request_timeout_s, self.call_timeout_s,
                      exploration=self.exploration(), unbudgeted_admission_s=self.unbudgeted_admission_s)

    def exploration(self) -> ExplorationRates:
        """The exploration rates; SettingsError naming the variable when one is malformed."""
        try:
            return ExplorationRates(check_epsilon(self.exploration_epsilon, "XROUTER_ROUTER_EXPLORATION_EPSILON"),
                                    parse_tenants(self.exploration_tenants, "XROUTER_ROUTER_EXPLORATION_TENANTS"))
        except ValueError as error:
            raise SettingsError(str(error)) from None

    def lm_generation(self) -> LMGeneration:
        return LMGeneration(self.lm_generation_url, self.lm_served_model, self.lm_price())

    def lm_price(self) -> RouterLMPrice:
        """The router LM's price; SettingsError naming the variable when it cannot be billed."""
        price = RouterLMPrice(self.lm_model_id, self.lm_input_usd_per_mtok, self.lm_output_usd_per_mtok)
        problem = price.problem()
        if problem is not None:
            field, why = problem
            raise SettingsError(f"{_PRICE_VARIABLES[field]} {why}")
        return price

    def tls(self) -> TlsFiles:
        """The TLS files of this service (all empty: plaintext)."""
        return TlsFiles(self.tls_cert_file, self.tls_key_file, self.tls_ca_file, self.tls_server_name)

    def validate(self) -> None:
        self.tls().validate("XROUTER_ROUTER")
        for name, value in (("XROUTER_ROUTER_ADAPTERS_TARGET", self.adapters_target),
                            ("XROUTER_ROUTER_METERING_TARGET", self.metering_target)):
            if ":" not in value:
                raise SettingsError(f"{name} must be host:port, got {value!r}")
        if not 1 <= self.default_max_turns <= self.max_turns:
            raise SettingsError("XROUTER_ROUTER_DEFAULT_MAX_TURNS must be within [1, XROUTER_ROUTER_MAX_TURNS]")
        self.exploration()
        self._check_processes()
        for name, value in (("XROUTER_ROUTER_POLICY_CONFIGMAP", self.policy_configmap),
                            ("XROUTER_ROUTER_POLICY_NAMESPACE", self.policy_namespace)):
            if value and not _DNS_NAME.fullmatch(value):
                raise SettingsError(f"{name} must be a Kubernetes object name (lowercase letters, digits, '-', "
                                    f"'.'), got {value!r}")
        if self.policy_configmap and not _CONFIGMAP_KEY.fullmatch(self.policy_key):
            raise SettingsError(f"XROUTER_ROUTER_POLICY_KEY must be a ConfigMap key (letters, digits, '-', '_', "
                                f"'.'), got {self.policy_key!r}")
        if self.lm_generation_url and not _BASE_URL.fullmatch(self.lm_generation_url):
            raise SettingsError("XROUTER_ROUTER_LM_GENERATION_URL must be the base URL of an OpenAI-compatible "
                                f"server, http(s)://host[:port]/v1 (vLLM's), got {self.lm_generation_url!r}")
        if self.lm_served_model and not self.lm_generation_url:
            raise SettingsError("XROUTER_ROUTER_LM_SERVED_MODEL names the model on the generation server; set "
                                "XROUTER_ROUTER_LM_GENERATION_URL too, or leave it empty")
        self.lm_price()
        if self.lm_served_model != self.lm_served_model.strip():
            raise SettingsError(f"XROUTER_ROUTER_LM_SERVED_MODEL has leading or trailing spaces: {self.lm_served_model!r}")

    def _check_processes(self) -> None:
        if self.processes > 1 and self.port == 0:  # each process would pick a different free port
            raise SettingsError(f"XROUTER_ROUTER_PORT=0 with XROUTER_ROUTER_PROCESSES={self.processes}: the "
                                "processes share their ports, set a port number")


_PRICE_VARIABLES = {"model_id": "XROUTER_ROUTER_LM_MODEL_ID",
                    "input_usd_per_mtok": "XROUTER_ROUTER_LM_INPUT_USD_PER_MTOK",
                    "output_usd_per_mtok": "XROUTER_ROUTER_LM_OUTPUT_USD_PER_MTOK"}
_DNS_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_CONFIGMAP_KEY = re.compile(r"[-._a-zA-Z0-9]{1,253}")
_BASE_URL = re.compile(r"https?://[^\s/?#]+(/[^\s?#]*)?")
