"""An aiohttp app on a free local port, for the test servers that speak a provider's protocol."""

from __future__ import annotations

from typing import Self

from aiohttp import web


class LocalHttpServer:
    """Subclasses add their routes in ``routes``; ``url`` is the ``/v1`` base once started."""

    url = ""

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def start(self) -> Self:
        app = web.Application()
        self.routes(app)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # noqa: SLF001
        self.url = f"http://127.0.0.1:{port}/v1"
        return self

    async def stop(self) -> None:
        await self._runner.cleanup()
