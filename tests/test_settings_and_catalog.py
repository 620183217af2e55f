"""Settings fail fast with the variable named; the catalog refuses bad entries with the field named;
costs are exact."""

from __future__ import annotations

import re
import subprocess
import sys
from decimal import Decimal

import pytest

from xrouter.adapters.catalog import CatalogError, load_catalog, parse_catalog, usd_to_micro
from xrouter.adapters.settings import DEFAULT_CATALOG, AdapterSettings
from xrouter.common.settings import SettingsError, load
from xrouter.router.settings import RouterSettings

TARGETS = {"XROUTER_ROUTER_ADAPTERS_TARGET": "127.0.0.1:1", "XROUTER_ROUTER_METERING_TARGET": "127.0.0.1:2"}


def test_router_settings_name_the_variable() -> None:
    with pytest.raises(SettingsError, match="^XROUTER_ROUTER_ADAPTERS_TARGET is required"):
        load(RouterSettings, {})
    with pytest.raises(SettingsError, match="^XROUTER_ROUTER_PORT must be an integer, got 'http'"):
        load(RouterSettings, {**TARGETS, "XROUTER_ROUTER_PORT": "http"})
    with pytest.raises(SettingsError, match="^XROUTER_ROUTER_METERING_TARGET must be host:port"):
        load(RouterSettings, {**TARGETS, "XROUTER_ROUTER_METERING_TARGET": "metering"})
    config = load(RouterSettings, {**TARGETS, "XROUTER_ROUTER_DEFAULT_COST_LAMBDA": "2.5"})
    assert config.limits().default_cost_lambda == 2.5 and config.port == 50051


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("XROUTER_ROUTER_HTTP_PORT", "80800", "XROUTER_ROUTER_HTTP_PORT must be <= 65535, got '80800'"),
    ("XROUTER_ROUTER_CALL_TIMEOUT_S", "0", "XROUTER_ROUTER_CALL_TIMEOUT_S must be > 0, got '0'"),
    ("XROUTER_ROUTER_KEY_CACHE_S", "7200", "XROUTER_ROUTER_KEY_CACHE_S must be <= 3600, got '7200'; set it to "
                                           "seconds a revoked key may still work"),
    ("XROUTER_ROUTER_DEFAULT_COST_LAMBDA", "cheap", "XROUTER_ROUTER_DEFAULT_COST_LAMBDA must be a number, got 'cheap'"),
])
def test_pydantic_bounds_name_the_variable(variable: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=f"^{re.escape(message)}"):
        load(RouterSettings, {**TARGETS, variable: value})


def test_flags_read_the_usual_words_and_empty_is_off() -> None:
    from xrouter.reward.settings import RewardSettings
    assert load(RewardSettings, {"XROUTER_REWARD_SANDBOX": ""}).sandbox is False
    assert load(RewardSettings, {"XROUTER_REWARD_SANDBOX": " Off "}).sandbox is False
    assert load(RewardSettings, {"XROUTER_REWARD_CLIENT_TESTS": "yes"}).client_tests is True
    with pytest.raises(SettingsError, match="^XROUTER_REWARD_SANDBOX must be true or false, got 'sometimes'"):
        load(RewardSettings, {"XROUTER_REWARD_SANDBOX": "sometimes"})


def test_settings_are_read_from_the_mapping_given_not_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XROUTER_ADAPTERS_PORT", "not-a-port")
    assert load(AdapterSettings, {}).port == 50052  # the embedded stack's defaults, whatever the shell holds
    with pytest.raises(SettingsError, match="^XROUTER_ADAPTERS_PORT must be an integer, got 'not-a-port'"):
        load(AdapterSettings)


def test_adapter_settings_check_files() -> None:
    with pytest.raises(SettingsError, match="^XROUTER_ADAPTERS_CATALOG: no file at /nope.yaml"):
        load(AdapterSettings, {"XROUTER_ADAPTERS_CATALOG": "/nope.yaml"})
    with pytest.raises(SettingsError, match="^XROUTER_ADAPTERS_REPLAY_DATASETS: 'x' is not name=path"):
        load(AdapterSettings, {"XROUTER_ADAPTERS_REPLAY_DATASETS": "x"})


def test_a_service_with_bad_settings_exits_with_the_message() -> None:
    done = subprocess.run([sys.executable, "-m", "xrouter.router"], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin"})
    assert done.returncode != 0 and "XROUTER_ROUTER_ADAPTERS_TARGET is required" in done.stderr


def test_bundled_catalog_loads() -> None:
    catalog = load_catalog(DEFAULT_CATALOG)
    assert len(catalog) == 11
    assert catalog["gpt-4-1106-preview"].input_usd_per_mtok == Decimal("10.0")


ENTRY = {"id": "m", "backend": "replay", "dataset": "d", "input_usd_per_mtok": "0.5",
         "output_usd_per_mtok": "1.5", "context_tokens": 4096, "max_output_tokens": 512, "description": "x"}


@pytest.mark.parametrize(("change", "message"), [
    ({"backend": "carrier-pigeon"}, "model 'm'.backend: 'carrier-pigeon' is not supported"),
    ({"input_usd_per_mtok": "-1"}, "model 'm'.input_usd_per_mtok: must be >= 0, got '-1'"),
    ({"input_usd_per_mtok": "Infinity"}, "model 'm'.input_usd_per_mtok: must be a finite number"),
    ({"output_usd_per_mtok": "cheap"}, "model 'm'.output_usd_per_mtok: must be a number, got 'cheap'"),
    ({"context_tokens": 0}, "model 'm'.context_tokens: must be > 0, got 0"),
    ({"context_tokens": 4096.5}, "model 'm'.context_tokens: must be an integer, got 4096.5"),
    ({"tags": ["fast", 7]}, "model 'm'.tags[1]: must be a string, got 7"),
    # A misspelt key would otherwise leave its field at the default without a word.
    ({"max_ouput_tokens": 256}, "model 'm'.max_ouput_tokens: is not a known field"),
    ({"dataset": ""}, "model 'm'.dataset: a replay model needs"),
    ({"description": None}, "model 'm'.description: must be a string"),
])
def test_catalog_errors_name_entry_and_field(change, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CatalogError, match=re.escape(message)):
        parse_catalog({"models": [{**ENTRY, **change}]})


def test_duplicate_ids_are_refused() -> None:
    with pytest.raises(CatalogError, match="unique"):
        parse_catalog({"models": [ENTRY, ENTRY]})


def test_costs_are_exact_micro_dollars() -> None:
    spec = parse_catalog({"models": [ENTRY]})["m"]
    # 1000 in at $0.5/M = 500 µ$, 333 out at $1.5/M = 499.5 µ$ → 999.5 → half-even → 1000.
    assert spec.cost_micro_usd(1000, 333) == 1000
    # Summing many small costs stays exact: 0.1 USD ten times is 1 USD, unlike float addition.
    assert sum(usd_to_micro(0.1) for _ in range(10)) == 1_000_000
    assert usd_to_micro(0.0001551) == 155  # recorded RouterBench cost, half-even at the micro-dollar
