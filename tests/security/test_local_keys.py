"""The embedded default's keys (`xrouter up`, `make run`): issued through a real metering server,
kept in a file only the user may read, reused while they stay valid, replaced once revoked."""

from __future__ import annotations

import asyncio
import json

from opentelemetry.sdk.trace import TracerProvider

from xrouter.common.grpc_server import GrpcServer
from xrouter.metering import server as metering_server
from xrouter.metering.auth import hash_key
from xrouter.metering.ledger import Ledger
from xrouter.metering.store import make_engine
from xrouter.supervisor import local_keys


async def test_local_keys_are_private_reused_and_replaced_when_revoked(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ledger = Ledger(make_engine(f"sqlite:///{tmp_path / 'metering.db'}"), reservation_ttl_s=300)
    await asyncio.to_thread(ledger.create_schema)
    server = GrpcServer("metering", metering_server.register(ledger), TracerProvider())
    await server.start()
    target = f"127.0.0.1:{server.port}"
    try:
        first = await asyncio.to_thread(local_keys, tmp_path, target)
        assert (tmp_path / "api-keys.json").stat().st_mode & 0o777 == 0o600
        assert json.loads((tmp_path / "api-keys.json").read_text()) == first
        admin = ledger.find_tenant_key(hash_key(first["admin_key"]))
        tenant = ledger.find_tenant_key(hash_key(first["api_key"]))
        assert (admin.role.value, admin.tenant, tenant.role.value, tenant.tenant) == ("admin", "local", "tenant", "local")
        assert await asyncio.to_thread(local_keys, tmp_path, target) == first  # a restart keeps them
        ledger.revoke_api_key(tenant.key_id)
        second = await asyncio.to_thread(local_keys, tmp_path, target)
        assert second["api_key"] != first["api_key"] and second["admin_key"] != first["admin_key"]
        assert ledger.find_tenant_key(hash_key(second["api_key"])) is not None
        assert ledger.find_tenant_key(hash_key(first["admin_key"])) is None  # the old pair's survivor too
    finally:
        await server.stop(0)
        ledger.engine.dispose()
