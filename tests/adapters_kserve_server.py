"""A real ``kserve.ModelServer`` (REST and gRPC) with small text models behind it, run as its own
process by the KServe adapter tests:

    python tests/adapters_kserve_server.py --http_port 8080 --grpc_port 8081

Models (xrouter's text-generation convention over OIP v2, see backends/kserve_oip.py):
``echo`` answers "echo: <last user message>" with whitespace-word token counts; ``echo-nocount``
answers the same without token outputs; ``slow`` answers after 5 s; ``picky`` refuses every request
as invalid input; ``broken`` fails with an internal error.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import kserve
import numpy as np
from kserve import InferOutput, InferRequest, InferResponse
from kserve.errors import InvalidInput


class TextModel(kserve.Model):
    """A deterministic chat model speaking xrouter's OIP text convention."""

    def __init__(self, name: str, counts: bool = True, delay_s: float = 0.0) -> None:
        super().__init__(name)
        self.counts, self.delay_s = counts, delay_s
        self.ready = True

    async def predict(self, payload: InferRequest, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> InferResponse:
        if self.name == "picky":
            raise InvalidInput("text_input: this model accepts nothing")
        if self.name == "broken":
            raise RuntimeError("the model fell over")  # unhandled: REST 500, gRPC INTERNAL
        await asyncio.sleep(self.delay_s)
        if headers and headers.get("traceparent"):  # the test reads the trace context that reached us from the log
            print(f"{self.name} received traceparent={headers['traceparent']}", flush=True)
        raw = payload.inputs[0].data[0]  # str over REST (JSON), bytes over gRPC
        chat = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
        prompt = next(m["content"] for m in reversed(chat) if m["role"] == "user")
        words = f"echo: {prompt}".split(" ")
        parameters: dict[str, Any] = payload.parameters or {}
        limit = parameters.get("max_tokens")
        limit = getattr(limit, "int64_param", limit)  # a gRPC InferParameter or a REST number
        temperature = parameters.get("temperature")
        float(getattr(temperature, "string_param", temperature))  # a REST number, or a gRPC decimal string
        finish = "stop"
        if limit and len(words) > int(limit):
            words, finish = words[: int(limit)], "length"
        outputs = [InferOutput("text_output", [1], "BYTES", [" ".join(words)]),
                   InferOutput("finish_reason", [1], "BYTES", [finish])]
        if self.counts:
            prompt_tokens = sum(len(m["content"].split()) for m in chat)
            outputs += [InferOutput("input_tokens", [1], "INT64", np.array([prompt_tokens], dtype=np.int64).tolist()),
                        InferOutput("output_tokens", [1], "INT64", [len(words)])]
        return InferResponse(response_id=payload.id or "", model_name=self.name, infer_outputs=outputs)


if __name__ == "__main__":
    kserve.ModelServer(workers=1, enable_grpc=True, grace_period=1).start([
        TextModel("echo"), TextModel("echo-nocount", counts=False), TextModel("slow", delay_s=5.0),
        TextModel("picky"), TextModel("broken")])
