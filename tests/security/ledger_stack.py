"""The stack the security tests attack: the four services on real gRPC servers with the ledger on
real PostgreSQL (a fresh schema per module), and an adapters service that counts the model calls
reaching it, so that "no model was called" is measured where the money would be spent."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import sqlalchemy as sa

from xrouter.adapters import server as adapters_server
from xrouter.adapters.core import AdapterCore
from xrouter.adapters.settings import AdapterSettings
from xrouter.common import settings
from xrouter.common.outcomes import ROUTERBENCH, read_outcomes
from xrouter.local_stack import InProcessStack

ARC = "arc-challenge.test.1/test"
TABLES = ("reservations", "ledger_calls", "request_summaries")


def arc_prompt() -> str:
    """A prompt the bundled replay models have recorded answers for."""
    return next(row.prompt for row in read_outcomes(ROUTERBENCH) if row.prompt_id == ARC)


class CountingAdapters:
    """Wraps the adapters' core: counts Invoke calls, and can hold each one for ``delay_s`` (an
    attempt that is still in flight when its retry arrives)."""

    def __init__(self, core: AdapterCore) -> None:
        self.core, self.calls, self.delay_s = core, 0, 0.0
        inner = core.invoke

        async def invoke(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            return await inner(*args, **kwargs)

        core.invoke = invoke  # type: ignore[method-assign]


@contextlib.asynccontextmanager
async def postgres_stack(server_url: str) -> AsyncIterator[tuple[InProcessStack, CountingAdapters]]:
    schema = f"sec_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(server_url)
    with engine.begin() as connection:
        connection.execute(sa.text(f'create schema "{schema}"'))
    separator = "&" if "?" in server_url else "?"
    counting = CountingAdapters(await asyncio.to_thread(adapters_server.build_core, settings.load(AdapterSettings, {})))
    stack = await InProcessStack(f"{server_url}{separator}options=-csearch_path%3D{schema}",
                                 policy="fixed:gpt-4-1106-preview", adapter_core=counting.core).start()
    try:
        yield stack, counting
    finally:
        await stack.stop()
        stack.ledger.engine.dispose()
        with engine.begin() as connection:
            connection.execute(sa.text(f'drop schema "{schema}" cascade'))
        engine.dispose()


def ledger_rows(stack: InProcessStack) -> dict[str, int]:
    """Rows per ledger table: what a refused request must leave unchanged."""
    with stack.ledger.engine.connect() as connection:
        return {table: connection.execute(sa.text(f"select count(*) from {table}")).scalar_one() for table in TABLES}
