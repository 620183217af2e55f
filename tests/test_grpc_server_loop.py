"""common/grpc_server.run: every service's event loop is uvloop unless XROUTER_EVENT_LOOP says asyncio."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from xrouter.common import grpc_server


async def _loop_type() -> type:
    return type(asyncio.get_running_loop())


def test_services_run_on_uvloop_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XROUTER_EVENT_LOOP", raising=False)
    assert issubclass(grpc_server.run("router", _loop_type), uvloop.Loop)


def test_the_stdlib_loop_on_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XROUTER_EVENT_LOOP", "asyncio")
    loop_type = grpc_server.run("router", _loop_type)
    assert not issubclass(loop_type, uvloop.Loop) and issubclass(loop_type, asyncio.BaseEventLoop)


def test_an_unknown_loop_is_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("XROUTER_EVENT_LOOP", "trio")
    with pytest.raises(SystemExit) as exited:
        grpc_server.run("metering", _loop_type)
    assert exited.value.code == 2
    assert "xrouter-metering: XROUTER_EVENT_LOOP must be one of ['uvloop', 'asyncio'], got 'trio'" in capsys.readouterr().err
