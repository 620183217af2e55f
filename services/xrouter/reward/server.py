"""The reward service's gRPC face: a thin servicer over :class:`Scorer`, and the entry point."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import grpc

from xrouter.api.reward.v1 import reward_pb2, reward_pb2_grpc
from xrouter.common import grpc_server, settings, telemetry
from xrouter.common.errors import PermissionDenied, XRouterError
from xrouter.common.grpc_server import Register
from xrouter.reward.core import Reference, ScoreResult, Scorer
from xrouter.reward.formula import RewardConfig
from xrouter.reward.sandbox import Sandbox, SandboxUnavailable
from xrouter.reward.settings import RewardSettings
from xrouter.reward.verifiers import CodeTests, MathVerifier, RecordedLabels
from xrouter.reward.verifiers.judge import Judge

log = logging.getLogger(__name__)

SERVICE = reward_pb2.DESCRIPTOR.services_by_name["RewardService"].full_name


def to_reference(ref: reward_pb2.Reference) -> Reference:
    """The domain reference of a proto one (an unset ``code`` stays None)."""
    code = None
    if ref.HasField("code"):
        code = CodeTests(asserts=tuple(ref.code.asserts), setup=ref.code.setup, check=ref.code.check,
                         entry_point=ref.code.entry_point, prefix=ref.code.prefix)
    return Reference(task_type=ref.task_type, gold=ref.gold, dataset=ref.dataset,
                     prompt_id=ref.prompt_id, aliases=tuple(ref.aliases), code=code,
                     rubric=ref.rubric, options=ref.options)


def _to_response(result: ScoreResult) -> reward_pb2.ScoreResponse:
    return reward_pb2.ScoreResponse(score=result.score, reward=result.reward, detail=result.detail,
                                    flagged=result.flagged)


def check_client_tests(request: reward_pb2.ScoreRequest | reward_pb2.CheckReferenceRequest, allowed: bool) -> None:
    """Refuse tests written by the caller unless this service trusts its callers with them:
    whoever writes the tests decides the score (``assert True`` passes anything)."""
    if request.reference.HasField("code") and not allowed:
        raise PermissionDenied("reference.code: this reward service does not run tests written by "
                               "the caller (XROUTER_REWARD_CLIENT_TESTS is off): whoever writes the "
                               "tests decides the score")


async def _score(scorer: Scorer, request: reward_pb2.ScoreRequest,
                 client_tests: bool = False) -> reward_pb2.ScoreResponse:
    check_client_tests(request, client_tests)
    return _to_response(await scorer.score(
        request.prompt, request.response, to_reference(request.reference), request.cost_usd,
        request.cost_lambda, router_cost_usd=request.router_cost_usd, failure=request.failure))


def _at_index(error: XRouterError, index: int) -> XRouterError:
    """The same domain error (same type, so the same status) with the batch position appended;
    appended, not prefixed, so an INVALID_ARGUMENT message still starts with its field."""
    # Built without __init__ because subclasses take different arguments (field, problem, ...).
    located = type(error).__new__(type(error))
    located.__dict__.update(error.__dict__)
    located.message = f"{error.message} (ScoreBatch request {index})"
    located.args = (located.message,)
    return located


class RewardServicer(reward_pb2_grpc.RewardServiceServicer):
    """proto -> :class:`Scorer` -> proto; domain errors are the interceptor's business."""

    def __init__(self, scorer: Scorer, max_parallel: int = 8, client_tests: bool = False) -> None:
        if max_parallel < 1:
            raise ValueError(f"max_parallel must be >= 1, got {max_parallel}")
        self._scorer = scorer
        self._max_parallel = max_parallel
        self._client_tests = client_tests

    async def Score(self, request: reward_pb2.ScoreRequest,
                    context: grpc.aio.ServicerContext) -> reward_pb2.ScoreResponse:
        # The scorer keeps the event loop free: slow verifiers run in threads or processes.
        return await _score(self._scorer, request, self._client_tests)

    async def CheckReference(self, request: reward_pb2.CheckReferenceRequest,
                             context: grpc.aio.ServicerContext) -> reward_pb2.CheckReferenceResponse:
        check_client_tests(request, self._client_tests)
        self._scorer.check(to_reference(request.reference))
        return reward_pb2.CheckReferenceResponse()

    async def ScoreBatch(self, request_iterator: AsyncIterator[reward_pb2.ScoreRequest],
                         context: grpc.aio.ServicerContext) -> AsyncIterator[reward_pb2.ScoreResponse]:
        """Score up to ``max_parallel`` requests at once and answer in request order; the first
        failing request (in request order) aborts the stream with its error and index."""
        # At most max_parallel requests are between "read" and "answered", which bounds memory and
        # gives the client back-pressure; the reader runs apart from the writer so a client that
        # waits for each answer before sending the next request cannot deadlock the stream.
        window = asyncio.Semaphore(self._max_parallel)
        queue: asyncio.Queue[asyncio.Task[reward_pb2.ScoreResponse] | None] = asyncio.Queue()

        async def item(index: int, request: reward_pb2.ScoreRequest) -> reward_pb2.ScoreResponse:
            try:
                return await _score(self._scorer, request, self._client_tests)
            except XRouterError as error:
                raise _at_index(error, index) from error

        async def read() -> None:
            try:
                index = 0
                async for request in request_iterator:
                    await window.acquire()
                    queue.put_nowait(asyncio.create_task(item(index, request)))
                    index += 1
            finally:
                queue.put_nowait(None)  # wakes the writer even when reading failed

        reader = asyncio.create_task(read())
        try:
            while (task := await queue.get()) is not None:
                response = await task
                window.release()
                yield response
            await reader  # re-raises a failure to read the request stream
        finally:
            reader.cancel()
            while not queue.empty():
                if (task := queue.get_nowait()) is not None:
                    task.cancel()
                    # Mark a failure nobody will await as seen, so asyncio does not log it.
                    task.add_done_callback(lambda t: t.cancelled() or t.exception())


def register(scorer: Scorer, max_parallel: int = 8, client_tests: bool = False) -> Register:
    """How to add the reward service to a server; the callable returns its full service name.
    ``client_tests``: run tests the caller wrote (``reference.code``); off, they are refused."""
    def add(server: grpc.aio.Server) -> list[str]:
        reward_pb2_grpc.add_RewardServiceServicer_to_server(
            RewardServicer(scorer, max_parallel, client_tests), server)
        return [SERVICE]
    return add


def load_recorded(paths: Mapping[str, Path]) -> dict[str, RecordedLabels]:
    """Index every recorded-label dataset once, logging its size and load time."""
    recorded = {}
    for name, path in paths.items():
        started = time.perf_counter()
        recorded[name] = RecordedLabels.from_file(path, name=name)
        log.info("recorded labels %r: %d prompts from %s in %.1fs", name, len(recorded[name]), path,
                 time.perf_counter() - started)
    return recorded


def build_sandbox(config: RewardSettings) -> Sandbox | None:
    """The code sandbox, checked by running a trivial program; None (code scoring refused, with
    the cause logged) when it is switched off or this host cannot build it."""
    if not config.sandbox:
        log.info("code sandbox off (XROUTER_REWARD_SANDBOX=false): code answers are refused")
        return None
    if not config.client_tests:
        log.info("XROUTER_REWARD_CLIENT_TESTS=false: code references (tests written by the caller) "
                 "are refused with PERMISSION_DENIED")
    log.info("memory bounds (MiB, worst case): %s against a pod limit of %s", config.memory_budget_mb(),
             config.pod_memory_limit_mb() or "none found")
    try:
        sandbox = Sandbox(config.sandbox_limits(), max_parallel=config.sandbox_parallel)
        sandbox.probe()
    except SandboxUnavailable as error:
        log.error("code sandbox unavailable, code answers will be refused: %s", error)
        return None
    log.info("code sandbox ready: %s", sandbox.describe())
    return sandbox


def main() -> None:
    """Entry point of ``xrouter-reward``: settings, datasets, then serve until SIGTERM."""
    grpc_server.configure_logging()
    try:
        config = settings.load(RewardSettings)
        # Loading takes seconds for the bundled set, so it happens once here, not per request.
        recorded = load_recorded(config.datasets())
    except (settings.SettingsError, ValueError, OSError) as error:
        print(f"xrouter-reward: {error}", file=sys.stderr)
        sys.exit(2)
    reward = RewardConfig(k=config.k, cost_max=config.cost_max,
                          charge_router_cost=config.charge_router_cost)
    sandbox = build_sandbox(config)

    async def build(provider):  # type: ignore[no-untyped-def]
        math = MathVerifier(config.math_workers, config.math_deadline_s,
                            memory_bytes=config.math_memory_mb * 2**20)
        await asyncio.to_thread(math.start)
        channel = telemetry.channel(config.adapters_target, provider, config.tls()) if config.judge_model else None
        judge = Judge(channel, config.judge_model, config.judge_timeout_s) if channel else None
        scorer = Scorer(recorded, reward, sandbox=sandbox, math=math, judge=judge)

        async def close() -> None:
            math.close()
            if channel is not None:
                await channel.close()
        return register(scorer, config.max_parallel, config.client_tests), close

    grpc_server.run("reward", lambda: grpc_server.run_service(
        "reward", build, host=config.host, port=config.port, grace=config.grace_s,
        metrics_port=config.metrics_port, tls=config.tls(), health_port=config.health_port))
