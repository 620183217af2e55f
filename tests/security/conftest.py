"""A running stack on a real PostgreSQL ledger for the security tests, one per module, and HTTP
helpers. Keys are issued as an operator would (the ledger, what `xrouter keys create` writes)."""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import sqlalchemy

from xrouter.local_stack import InProcessStack

ARC = "arc-challenge.test.1/test"


@pytest.fixture(scope="module")
def module_postgres_url(postgres_server_url: str):  # type: ignore[no-untyped-def]
    """A fresh schema on the Postgres server for one module (dropped afterwards)."""
    schema = f"sec_{uuid.uuid4().hex[:12]}"
    engine = sqlalchemy.create_engine(postgres_server_url)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text(f'create schema "{schema}"'))
    separator = "&" if "?" in postgres_server_url else "?"
    yield f"{postgres_server_url}{separator}options=-csearch_path%3D{schema}"
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text(f'drop schema "{schema}" cascade'))
    engine.dispose()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(module_postgres_url: str):  # type: ignore[no-untyped-def]
    # A one-second key cache, so that the revocation test can wait out its bound.
    running = await InProcessStack(module_postgres_url, router_env={"XROUTER_ROUTER_KEY_CACHE_S": "1"}).start()
    yield running
    await running.stop()


@pytest.fixture(scope="module")
def prompt(recorded) -> str:  # type: ignore[no-untyped-def]
    return recorded[ARC][""]


def new_tenant(kind: str = "t") -> str:
    return f"{kind}-{uuid.uuid4().hex[:10]}"


def chat(prompt: str, **controls: Any) -> dict[str, Any]:
    """An OpenAI chat body routed to the cheapest model (quick, and billed)."""
    return {"model": "xrouter", "messages": [{"role": "user", "content": prompt}],
            "xrouter": {"policy": "cheapest", **controls}}


async def post_chat(stack: InProcessStack, body: dict[str, Any],
                    headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any], Any]:
    """POST /v1/chat/completions: (status, JSON body, response headers)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http, \
            http.post(stack.http_url + "/v1/chat/completions", json=body, headers=headers or {}) as response:
        return response.status, await response.json(content_type=None), response.headers


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def billed_requests(stack: InProcessStack, tenant: str) -> int:
    """How many settled requests the ledger holds for ``tenant``."""
    return stack.ledger.usage(tenant).requests
