"""A budget on a model the catalog does not list is refused, naming ``model`` (metering/catalog_models.py).

Before: SetBudget stored "gpt-4" for a catalog whose model is "gpt-4-1106-preview", answered OK, and the
budget matched no call, ever: the tenant spent without limit on the model it meant to cap."""

from __future__ import annotations

import os
import pathlib

import grpc
import pytest
import sqlalchemy as sa
from opentelemetry.sdk.trace import TracerProvider

from xrouter.adapters.settings import DEFAULT_CATALOG
from xrouter.api.metering.v1 import metering_pb2, metering_pb2_grpc
from xrouter.common import settings
from xrouter.common.grpc_server import GrpcServer
from xrouter.metering import server as metering_server
from xrouter.metering.catalog_models import CatalogModels
from xrouter.metering.ledger import Ledger
from xrouter.metering.schema import Budget
from xrouter.metering.settings import MeteringSettings
from xrouter.metering.store import make_engine
from xrouter.supervisor import stack_env

MONTH = metering_pb2.BUDGET_PERIOD_MONTH


def budget(limit: int, model: str = "") -> metering_pb2.SetBudgetRequest:
    return metering_pb2.SetBudgetRequest(tenant="acme", period=MONTH, limit_micro_usd=limit, model=model)


def write_catalog(path: pathlib.Path, *ids: str) -> pathlib.Path:
    path.write_text("models:\n" + "".join(f"  - id: {model}\n    backend: replay\n    dataset: x\n" for model in ids))
    return path


@pytest.fixture()
def catalog(tmp_path: pathlib.Path) -> pathlib.Path:
    return write_catalog(tmp_path / "catalog.yaml", "gpt-4-1106-preview", "mistralai/mixtral-8x7b-chat")


@pytest.fixture()
def ledger(tmp_path: pathlib.Path) -> Ledger:
    ledger = Ledger(make_engine(f"sqlite:///{tmp_path / 'metering.db'}"), reservation_ttl_s=300)
    ledger.create_schema()
    return ledger


@pytest.fixture()
async def stub(ledger: Ledger, catalog: pathlib.Path):  # type: ignore[no-untyped-def]
    server = GrpcServer("metering", metering_server.register(ledger, models=CatalogModels(catalog)), TracerProvider())
    port = await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield metering_pb2_grpc.MeteringServiceStub(channel)
    await channel.close()
    await server.stop(0)


def budgets(ledger: Ledger) -> set[tuple[str, str]]:
    with ledger.engine.connect() as connection:
        return {(row.tenant, row.model) for row in connection.execute(sa.select(Budget.tenant, Budget.model))}


async def test_a_misspelt_model_is_refused_naming_the_field_and_the_model_meant(stub, ledger: Ledger) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.SetBudget(budget(5, "gpt-4-1106"))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith("model: 'gpt-4-1106' is not a model of the catalog")
    assert "did you mean 'gpt-4-1106-preview'" in refused.value.details()
    assert budgets(ledger) == set()  # nothing stored

    await stub.SetBudget(budget(5, "gpt-4-1106-preview"))
    await stub.SetBudget(budget(9))  # all models
    assert budgets(ledger) == {("acme", "gpt-4-1106-preview"), ("acme", "")}


async def test_a_budget_on_a_model_dropped_from_the_catalog_can_still_be_removed(stub, ledger: Ledger) -> None:  # type: ignore[no-untyped-def] # noqa: F811
    ledger.set_budget("acme", "month", 5, model="claude-v1")  # set while the catalog listed it
    with pytest.raises(grpc.aio.AioRpcError) as refused:  # changing it is refused ...
        await stub.SetBudget(budget(7, "claude-v1"))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # ... removing it (no hard and no soft limit) is not
    await stub.SetBudget(budget(-1, "claude-v1"))
    assert budgets(ledger) == set()


async def test_a_model_added_to_the_catalog_file_is_budgetable_without_a_restart(  # type: ignore[no-untyped-def]
        stub, ledger: Ledger, catalog: pathlib.Path) -> None:  # noqa: F811
    request = budget(5, "qwen2.5-7b")
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.SetBudget(request)
    write_catalog(catalog, "gpt-4-1106-preview", "mistralai/mixtral-8x7b-chat", "qwen2.5-7b")
    stat = catalog.stat()
    os.utime(catalog, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # a newer file, whatever the clock
    await stub.SetBudget(request)
    assert ("acme", "qwen2.5-7b") in budgets(ledger)


def test_an_unreadable_catalog_keeps_the_last_good_list(catalog: pathlib.Path) -> None:
    models = CatalogModels(catalog)
    assert models() == {"gpt-4-1106-preview", "mistralai/mixtral-8x7b-chat"}
    catalog.write_text("models: [unclosed")  # a ConfigMap caught mid-update
    assert models() == {"gpt-4-1106-preview", "mistralai/mixtral-8x7b-chat"}


@pytest.mark.parametrize("content, problem", [
    (None, "cannot read the catalog"),
    ("models: [unclosed", "cannot read the catalog"),
    ("models:\n  - backend: replay\n", "with a string 'id'"),
    ("models: []\n", "lists no models"),
])
def test_a_bad_catalog_setting_is_refused_at_start_naming_the_variable(
        tmp_path: pathlib.Path, content: str | None, problem: str) -> None:
    path = tmp_path / "catalog.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(settings.SettingsError, match=f"^XROUTER_METERING_CATALOG: .*{problem}"):
        settings.load(MeteringSettings, {"XROUTER_METERING_DATABASE_URL": "sqlite:///x.db",
                                         "XROUTER_METERING_CATALOG": str(path)})


def test_xrouter_up_checks_budgets_against_the_catalog_the_adapters_serve(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XROUTER_METERING_CATALOG", raising=False)
    monkeypatch.delenv("XROUTER_ADAPTERS_CATALOG", raising=False)
    assert stack_env(tmp_path)["metering"]["XROUTER_METERING_CATALOG"] == str(DEFAULT_CATALOG)
    monkeypatch.setenv("XROUTER_ADAPTERS_CATALOG", "/etc/mine.yaml")
    assert stack_env(tmp_path)["metering"]["XROUTER_METERING_CATALOG"] == "/etc/mine.yaml"
    monkeypatch.setenv("XROUTER_METERING_CATALOG", "/etc/other.yaml")  # named for metering itself: honoured
    assert stack_env(tmp_path)["metering"]["XROUTER_METERING_CATALOG"] == "/etc/other.yaml"
