"""A local HTTP server that speaks the OpenAI chat-completions protocol (plain and server-sent
events), for testing the adapters' OpenAI backend without a paid API.

It answers deterministically ("echo: <last user message>", usage counted in whitespace words so that
it differs from the adapters' own estimate), honours ``stop`` (cut before the first stop sequence),
``response_format`` json_object (the echo as a JSON object) and ``tools`` (a call of the first tool,
or the one ``tool_choice`` names, with the prompt as its argument; streamed in pieces, as OpenAI
streams them), and each model name can be scripted with the faults a
real provider shows: HTTP errors with OpenAI error bodies and Retry-After, slowness, malformed JSON,
truncated streams, a slow trickle. The official ``openai`` client is tested against it too.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import time
from typing import Any

from aiohttp import web

from local_http import LocalHttpServer


@dataclasses.dataclass
class Fault:
    """One scripted reply. ``kind``: ok, status, sleep, malformed, truncate, trickle; mid-stream:
    pace (each chunk ``seconds`` apart), gate (``chunks`` chunks, then wait for the server's ``gate``),
    stall (``chunks`` chunks, then silence), garbage (``chunks`` chunks, then a malformed event)."""

    kind: str = "ok"
    status: int = 200
    retry_after: str | None = None
    seconds: float = 0.0  # sleep: before answering; trickle: between chunks
    chunks: int = 2  # truncate: chunks sent before the connection is cut
    usage: bool = True  # report usage (else the client must estimate)
    body: dict[str, Any] | None = None  # status: the error body (default: an OpenAI-style one)


class OpenAIProtocolServer(LocalHttpServer):
    """``script[model]`` is a list of faults consumed one per request (the last one repeats)."""

    def __init__(self) -> None:
        self.script: dict[str, list[Fault]] = {}
        self.requests: collections.Counter[str] = collections.Counter()
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.disconnects: list[float] = []  # when a client went away mid-stream (time.monotonic)
        self.completed = 0  # streams sent to their end ([DONE])
        self.gate = asyncio.Event()  # what a "gate" stream waits for after its first chunks

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._chat)

    def _next(self, model: str) -> Fault:
        steps = self.script.get(model) or [Fault()]
        return steps.pop(0) if len(steps) > 1 else steps[0]

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return _error(400, "could not parse the JSON body", "invalid_request_error")
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            return _error(400, "'messages' is a required property", "invalid_request_error", "messages")
        model = str(body.get("model", ""))
        self.requests[model] += 1
        self.bodies.append(body)
        self.headers.append(dict(request.headers))
        fault = self._next(model)
        if fault.kind == "status":
            return _error(fault.status, f"scripted {fault.status}", "server_error" if fault.status >= 500
                          else "rate_limit_exceeded" if fault.status == 429 else "invalid_request_error",
                          retry_after=fault.retry_after, body=fault.body)
        if fault.kind == "sleep":
            await asyncio.sleep(fault.seconds)
        if fault.kind == "malformed":
            return web.Response(status=200, text='{"id": "x", "choices": [', content_type="application/json")
        prompt = next((m.get("content", "") for m in reversed(body["messages"]) if m.get("role") == "user"), "")
        if body.get("tools"):
            return await self._tool_call(request, body, prompt)
        text = f"echo: {prompt}"
        if (body.get("response_format") or {}).get("type") == "json_object":
            text = json.dumps({"echo": prompt})
        for stop in body.get("stop") or ():
            text = text.split(stop, 1)[0]
        words = text.split(" ")
        finish = "length" if body.get("max_tokens") and len(words) > body["max_tokens"] else "stop"
        if body.get("max_tokens"):
            words = words[: body["max_tokens"]]
        usage = {"prompt_tokens": sum(len(str(m.get("content", "")).split()) for m in body["messages"]),
                 "completion_tokens": len(words)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if not body.get("stream"):
            reply = {"id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()), "model": model,
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": " ".join(words)},
                                  "finish_reason": finish}]}
            if fault.usage:
                reply["usage"] = usage
            return web.json_response(reply)
        wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return await self._stream(request, model, words, usage if fault.usage and wants_usage else None, fault,
                                  finish)

    async def _stream(self, request: web.Request, model: str, words: list[str], usage: dict[str, int] | None,
                      fault: Fault, finish: str = "stop") -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
            event = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 0, "model": model,
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
            return f"data: {json.dumps(event)}\n\n".encode()

        try:
            await response.write(chunk({"role": "assistant", "content": ""}))
            pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
            if fault.kind == "trickle":
                pieces = [" tick"] * 10_000
            for number, piece in enumerate(pieces):
                if fault.kind == "truncate" and number == fault.chunks:
                    assert request.transport is not None
                    request.transport.close()  # cut mid-stream: no final chunk, no [DONE]
                    return response
                if number == fault.chunks and fault.kind in ("gate", "stall", "garbage"):
                    if fault.kind == "garbage":
                        await response.write(b'data: {"choices": [{"delta": \n\n')
                    elif not await self._wait(request, self.gate if fault.kind == "gate" else asyncio.Event()):
                        self.disconnects.append(time.monotonic())  # the client went away while we waited
                        return response
                await response.write(chunk({"content": piece}))
                if fault.kind in ("trickle", "pace"):
                    await asyncio.sleep(fault.seconds)
            await response.write(chunk({}, finish))
            if usage is not None:
                last = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "choices": [], "usage": usage}
                await response.write(f"data: {json.dumps(last)}\n\n".encode())
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            self.completed += 1
        except (ConnectionResetError, asyncio.CancelledError):
            self.disconnects.append(time.monotonic())
            raise
        return response


    async def _tool_call(self, request: web.Request, body: dict[str, Any], prompt: str) -> web.StreamResponse:
        """A call of the first tool (or the one tool_choice names), arguments {"query": prompt}."""
        choice = body.get("tool_choice")
        name = choice["function"]["name"] if isinstance(choice, dict) else body["tools"][0]["function"]["name"]
        arguments = json.dumps({"query": prompt})
        call = {"id": "call_test_1", "type": "function", "function": {"name": name, "arguments": arguments}}
        usage = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
        if not body.get("stream"):
            return web.json_response({
                "id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
                "usage": usage, "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                    "role": "assistant", "content": None, "tool_calls": [call]}}]})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        half = len(arguments) // 2
        pieces = [{"index": 0, "id": call["id"], "type": "function", "function": {"name": name, "arguments": ""}},
                  {"index": 0, "function": {"arguments": arguments[:half]}},
                  {"index": 0, "function": {"arguments": arguments[half:]}}]
        for piece in pieces:
            event = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 0, "model": body["model"],
                     "choices": [{"index": 0, "delta": {"tool_calls": [piece]}, "finish_reason": None}]}
            await response.write(f"data: {json.dumps(event)}\n\n".encode())
        last = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}], "usage": usage}
        await response.write(f"data: {json.dumps(last)}\n\ndata: [DONE]\n\n".encode())
        await response.write_eof()
        return response

    @staticmethod
    async def _wait(request: web.Request, gate: asyncio.Event) -> bool:
        """Wait for ``gate``; False as soon as the client closes the connection instead. (aiohttp does
        not cancel a handler whose client left, so the transport is watched.)"""
        while not gate.is_set():
            if request.transport is None or request.transport.is_closing():
                return False
            try:
                await asyncio.wait_for(gate.wait(), 0.01)
            except TimeoutError:
                pass
        return True


def _error(status: int, message: str, kind: str, param: str | None = None, retry_after: str | None = None,
           body: dict[str, Any] | None = None) -> web.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    payload = body or {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return web.json_response(payload, status=status, headers=headers)
