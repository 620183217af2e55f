"""A bench-only OpenAI-compatible backend: answers at once, or streams like a model generating.

``model`` picks the behaviour: ``instant`` answers (or streams) its 20 tokens with no delay; ``slow``
streams them ``--gap-ms`` apart (50 ms by default: the first token after one gap, as a model's prefill).
Usage is reported as OpenAI does (in the response, or in a last chunk when ``stream_options.include_usage``).

    .venv/bin/python -m bench.gateway_backend --port 8001
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from aiohttp import web

TOKENS = 20
_ANSWER = [("word" if i == 0 else f" w{i}") for i in range(TOKENS)]
_TEXT = "".join(_ANSWER)


def _usage(body: dict[str, Any]) -> dict[str, int]:
    prompt = sum(len(str(m.get("content", "")).split()) for m in body.get("messages") or [])
    return {"prompt_tokens": prompt, "completion_tokens": TOKENS, "total_tokens": prompt + TOKENS}


def make_app(gap_s: float) -> web.Application:
    # Pre-encoded: the backend should cost as little as possible, so that what is measured is the gateway.
    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model = str(body.get("model", "instant"))
        if not body.get("stream"):
            return web.json_response({
                "id": "chatcmpl-bench", "object": "chat.completion", "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": _TEXT}, "finish_reason": "stop"}],
                "usage": _usage(body)})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        gap = gap_s if model == "slow" else 0.0

        def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
            return ("data: " + json.dumps({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0,
                                           "model": model, "choices": [{"index": 0, "delta": delta,
                                                                        "finish_reason": finish}]}) + "\n\n").encode()

        await response.write(event({"role": "assistant", "content": ""}))
        for piece in _ANSWER:
            if gap:
                await asyncio.sleep(gap)
            await response.write(event({"content": piece}))
        await response.write(event({}, "stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            await response.write(("data: " + json.dumps({"id": "chatcmpl-bench", "object": "chat.completion.chunk",
                                                         "choices": [], "usage": _usage(body)}) + "\n\n").encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": m, "object": "model", "created": 0,
                                                              "owned_by": "bench"} for m in ("instant", "slow")]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway_backend")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--gap-ms", type=float, default=50.0, help="between streamed tokens of model 'slow'")
    args = parser.parse_args(argv)
    web.run_app(make_app(args.gap_ms / 1000), host="127.0.0.1", port=args.port, access_log=None, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
