"""The ``xrouter`` command: ``up`` (the local stack), ``route`` (one request), ``demo`` (make run),
``db`` (ledger migrations), ``keys`` (API keys), ``export-episodes`` (training data), ``eval`` (policies on recorded outcomes),
``train`` and ``publish`` (a checkpoint into the store, routers pointed at it)."""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import pathlib
import signal
import sys
from collections.abc import Callable

import grpc

from xrouter.adapters.catalog import CatalogError, load_catalog
from xrouter.adapters.settings import DEFAULT_CATALOG
from xrouter.api.common.v1 import common_pb2
from xrouter.api.router.v1 import router_pb2, router_pb2_grpc
from xrouter.common import bounds
from xrouter.common.errors import InvalidArgument
from xrouter.router.policy_store import BUNDLED_POLICY


def _home(args: argparse.Namespace) -> pathlib.Path:
    return pathlib.Path(args.home).resolve()


def embedded_policy_env() -> dict[str, str]:
    """The embedded default serves the bundled learned policy unless XROUTER_ROUTER_POLICY says otherwise."""
    return {} if os.environ.get("XROUTER_ROUTER_POLICY") else {"XROUTER_ROUTER_POLICY": str(BUNDLED_POLICY)}


def cmd_up(args: argparse.Namespace) -> int:
    from xrouter.supervisor import running_stack

    print("Starting the xrouter stack (embedded default: SQLite ledger, replay of RouterBench models, "
          "the bundled learned policy)")
    stop = {"signal": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(signal=True))
    with running_stack(_home(args), embedded_policy_env()) as info:
        print(f"\nRouter gRPC: {info['router']}   OpenAI-compatible HTTP: {info['http']}/v1")
        print(f"API key (tenant local): {info['api_key']}\nAdmin key (LoadPolicy, acts for any tenant): "
              f"{info['admin_key']}\n(both kept in {_home(args) / 'api-keys.json'}; send 'Authorization: Bearer <key>')")
        print("Try:  xrouter route \"What is the capital of France?\"  (Ctrl-C stops the stack)")
        try:
            while not stop["signal"]:
                signal.pause() if hasattr(signal, "pause") else None
        except KeyboardInterrupt:
            pass
        print("\nStopping (graceful drain)...")
    return 0


def cmd_route(args: argparse.Namespace) -> int:
    from xrouter.supervisor import read_stack

    # The local stack's addresses and key, when one runs (an explicit --target may need neither).
    stack = read_stack(_home(args)) if not args.target or (_home(args) / "stack.json").exists() else {}
    target = args.target or stack["router"]
    api_key = args.api_key or stack.get("api_key", "")
    request = router_pb2.RouteRequest(
        messages=[common_pb2.ChatMessage(role="user", content=args.prompt)],
        allowed_models=args.models.split(",") if args.models else [], max_turns=args.max_turns,
        tenant=args.tenant, policy=args.policy)
    if args.cost_lambda is not None:
        request.cost_lambda = args.cost_lambda
    if args.max_cost is not None:
        request.max_cost_usd = args.max_cost
    with grpc.insecure_channel(target) as channel:
        try:
            reply = router_pb2_grpc.RouterServiceStub(channel).Route(
                request, timeout=60, metadata=(("authorization", f"Bearer {api_key}"),) if api_key else None)
        except grpc.RpcError as error:
            print(f"error: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    print(reply.answer.rstrip())
    print(f"\n{'#':>2} {'turn':>4} {'model':<36} {'status':<14} {'tokens in/out':>14} {'cost $':>10}")
    for call in reply.calls:
        status = common_pb2.CallStatus.Name(call.status).removeprefix("CALL_STATUS_")
        print(f"{call.index:>2} {call.turn:>4} {call.model:<36} {status:<14} "
              f"{f'{call.input_tokens}/{call.output_tokens}':>14} {call.cost_usd:>10.6f}")
    strategy = router_pb2.Strategy.Name(reply.strategy).removeprefix("STRATEGY_").lower()
    print(f"\ntotal ${reply.total_cost_usd:.6f} · strategy {strategy} · turns {reply.turns_used} · "
          f"policy {reply.policy_kind}@{reply.policy_version} · trace {reply.trace_id}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from xrouter import demo
    from xrouter.supervisor import running_stack

    models = list(load_catalog(DEFAULT_CATALOG))
    lambdas = args.lambdas
    learned = BUNDLED_POLICY.is_dir() and not os.environ.get("XROUTER_ROUTER_POLICY")
    policies = [demo.PolicyFigures(p) for p in ("cheapest", "cascade", *(f"fixed:{m}" for m in models))]
    if learned:  # "" routes with the serving policy: the bundled checkpoint
        policies = [demo.PolicyFigures("", f"learned (bundled) λ={lam:g}", lam) for lam in lambdas] + policies
    prompts = demo.evaluation_prompts(args.prompts)
    home = _home(args)
    print(f"Starting the stack, then routing {len(prompts)} held-out RouterBench prompts "
          f"through {len(policies)} policies")
    with running_stack(home, embedded_policy_env()) as info:
        print(f"  routing with the local API key (tenant local; kept in {home / 'api-keys.json'}): {info['api_key']}")
        results = asyncio.run(demo.evaluate(info["router"], policies, prompts, api_key=info["api_key"]))
    demo.print_table(results)
    demo.write_report(results, prompts, home / "demo.json")
    print(f"\n(figures in {home / 'demo.json'}; scores are the recorded correctness of the answer returned)")
    served = all(r.failed == 0 for r in results)
    if learned and args.frontier_prompts:
        from xrouter_training.demo_frontier import frontier_on_every_source

        frontier_on_every_source(BUNDLED_POLICY, home / "demo-frontier", args.frontier_prompts)
    return 0 if served else 1


def cmd_eval(args: argparse.Namespace) -> int:
    from xrouter_training.evaluate_sources import run_cli  # the training package: imported only when used

    return run_cli(args)


def cmd_train(args: argparse.Namespace) -> int:
    from xrouter_training.config import ConfigError
    from xrouter_training.train import main as train  # the training package: imported only when used

    try:
        return train(args.config, args.out)
    except (ConfigError, CatalogError) as error:
        print(f"xrouter train: {error}", file=sys.stderr)
        return 2
    except ValueError as error:  # an outcome set that cannot be read names its file, line and field
        print(f"xrouter train: {args.config}: {error}", file=sys.stderr)
        return 2


def cmd_learn_sim(args: argparse.Namespace) -> int:
    from xrouter.common.errors import InvalidArgument
    from xrouter.common.outcomes import SOURCES
    from xrouter.router.compact.checkpoint import read_manifest
    from xrouter_training.traffic import run

    if args.fine_tune_every is not None and (not args.fine_tune_epochs or args.publish_gate):
        raise InvalidArgument("--fine-tune-every", "only with --fine-tune-epochs and without --publish-gate (behind "
                              "the gate each candidate, built every --every requests, is fine-tuned)")
    if args.source not in SOURCES:  # before minutes of simulation, not after
        raise InvalidArgument("--source", f"{args.source!r} is not a bundled outcome source; known: {sorted(SOURCES)}")
    if args.task:
        from xrouter.common.outcomes import tasks_of

        tasks = tasks_of(args.source)
        if args.task not in tasks:
            raise InvalidArgument("--task", f"{args.source} has no task {args.task!r}; its tasks: {sorted(tasks)}")
    for flag, checkpoint in (("--start", args.start), ("--ceiling", args.ceiling)):
        if checkpoint:
            try:
                read_manifest(pathlib.Path(checkpoint))
            except InvalidArgument as error:
                raise InvalidArgument(flag, str(error).removeprefix("source: ")) from None

    report = run(pathlib.Path(args.start), pathlib.Path(args.ceiling) if args.ceiling else None, args.source,
                 pathlib.Path(args.out), args.requests, args.every, args.epsilon, args.seed, args.verdicts,
                 args.publish_gate, args.task or None, args.fine_tune_epochs, args.fine_tune_every or 100)
    ceiling = report.get("ceiling", {}).get("apgr")
    served = f"{args.source}/{args.task}" if args.task else args.source
    print(f"{served}: APGR {report['frozen_start_apgr']:.3f} frozen -> {report['curve'][-1]['apgr']:.3f} after "
          f"{report['traffic']} requests" + (f" (ceiling {ceiling:.3f})" if ceiling is not None else "")
          + f"; {args.out}/traffic_learning.json and .png")
    return 0


def cmd_learn(args: argparse.Namespace) -> int:
    from xrouter_training.learn import run_cli  # the training package: imported only when used

    return run_cli(args)


def cmd_rollback(args: argparse.Namespace) -> int:
    from xrouter_training.publish import rollback_cli

    return rollback_cli(args)


def cmd_generalise(args: argparse.Namespace) -> int:
    from xrouter_training.generalise import run_cli  # the training package: imported only when used

    return run_cli(args)


def cmd_bundle(args: argparse.Namespace) -> int:
    from xrouter_training.bundle import bundle

    try:
        out = bundle(pathlib.Path(args.checkpoint), pathlib.Path(args.config), pathlib.Path(args.out))
    except (ValueError, InvalidArgument) as error:
        print(f"xrouter bundle: {getattr(error, 'message', error)}", file=sys.stderr)
        return 2
    print(f"bundled {args.checkpoint} into {out}")
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from xrouter_training.publish import run_cli  # the training package: imported only when used

    return run_cli(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xrouter", description=__doc__)
    parser.add_argument("--home", default=os.environ.get("XROUTER_HOME", "var"),
                        help="folder for the local stack's database, logs and addresses (default ./var)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start the four services locally until Ctrl-C").set_defaults(run=cmd_up)
    route = sub.add_parser("route", help="route one prompt through the running stack")
    route.add_argument("prompt")
    route.add_argument("--lambda", dest="cost_lambda", type=float, help="cost preference (>= 0)")
    route.add_argument("--max-cost", type=float, help="hard cap on the request's model spend, USD")
    route.add_argument("--models", help="comma-separated allowed models (default: the whole catalog)")
    route.add_argument("--policy", default="", help="override: cheapest, cascade or fixed:<model>")
    route.add_argument("--max-turns", type=int, default=0)
    route.add_argument("--tenant", default="")
    route.add_argument("--target", help="router host:port (default: the stack started by `xrouter up`)")
    route.add_argument("--api-key", default=os.environ.get("XROUTER_API_KEY", ""),
                       help="API key (default $XROUTER_API_KEY, else the local stack's key)")
    route.set_defaults(run=cmd_route)
    demo = sub.add_parser("demo", help="start the stack, evaluate every policy on held-out prompts, stop")
    demo.add_argument("--prompts", type=_at_least(1), default=200)
    demo.add_argument("--lambdas", type=_lambda_list, default="1,100,1000",
                      help="λ values at which the learned policy is shown (comma separated)")
    demo.add_argument("--frontier-prompts", type=_at_least(0), default=150,
                      help="validation prompts per bundled source for the offline frontier beside kNN (0: skip)")
    demo.set_defaults(run=cmd_demo)
    evaluate = sub.add_parser("eval", help="evaluate a checkpoint or baseline on recorded outcomes "
                              "against every baseline: report.json, frontier.png, decisions.jsonl")
    evaluate.add_argument("--data", help="outcome set (gzipped JSONL, ../shared/data format); or --source")
    evaluate.add_argument("--source", help="a bundled outcome set by name, or `all`: each evaluated on its own "
                          "pool into OUT/<source>/, compared in OUT/summary.json and summary.md")
    evaluate.add_argument("--policy", required=True,
                          help="checkpoint directory, or cheapest | cascade | fixed:<model> | random | oracle | knn")
    evaluate.add_argument("--out", type=_folder, required=True, help="folder for report.json, frontier.png, decisions.jsonl")
    evaluate.add_argument("--split", default="validation", help="train | validation | all (default validation)")
    evaluate.add_argument("--fold", type=int, default=0,
                          help="which fifth of the prompts is the validation split, 0-4 (default 0; cross-validation)")
    evaluate.add_argument("--lambdas", nargs="+", help="cost preferences to sweep (space or comma separated; "
                          "default 0 1 3 10 30 100 300 1000)")
    evaluate.add_argument("--max-turns", type=int, default=3)
    evaluate.add_argument("--catalog", help="model catalog YAML with a replay entry and prices for each data "
                          f"model (with --data; default {DEFAULT_CATALOG.name})")
    evaluate.add_argument("--models", default="", help="comma-separated pool (default: every catalog model recorded)")
    evaluate.add_argument("--limit", type=int, help="only the first N prompts of the split (smoke runs)")
    evaluate.add_argument("--no-knn", action="store_true", help="skip the kNN baseline (it needs the query encoder)")
    evaluate.add_argument("--knn-k", type=int, help="neighbours of the kNN baseline (default: chosen by "
                          "leave-one-out on the train split)")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the random baseline")
    evaluate.add_argument("--allow-partial", action="store_true",
                          help="evaluate the prompts every pool model has a recorded outcome for and list the "
                          "others under `skipped` in report.json (default: such prompts fail the run)")
    evaluate.add_argument("--held-out-tasks", default="",
                          help="evaluate only these task families (comma separated), with kNN fitted without them: "
                          "for a checkpoint trained with exclude_tasks (xrouter generalise --lotf)")
    evaluate.add_argument("--allow-seen", action="store_true",
                          help="evaluate a checkpoint on validation prompts it was trained on (refused by default: "
                          "its manifest says which fifth it held out; report.json records the overlap either way)")
    evaluate.set_defaults(run=cmd_eval)
    train = sub.add_parser("train", help="train the compact policy with GRPO (CPU here; GPU Job; torchrun)")
    train.add_argument("--config", required=True, help="training config YAML (see training/configs/)")
    train.add_argument("--out", type=_folder, required=True, help="folder for metrics.jsonl and the checkpoint/")
    train.set_defaults(run=cmd_train)
    generalise = sub.add_parser("generalise", help="leave-one-source-out, leave-one-model-out and ablation runs "
                                "(train + eval each): OUT/generalisation.json and .md")
    generalise.add_argument("--config", required=True, help="a training config with sources: [...]")
    generalise.add_argument("--out", type=_folder, required=True)
    generalise.add_argument("--loso", action="store_true", help="train without each source, evaluate on it")
    generalise.add_argument("--lotf", default="", metavar="SOURCE/TASK,...",
                            help="train without each task family, evaluate on every prompt of it (e.g. routerbench/mbpp)")
    generalise.add_argument("--lomo", default="", metavar="MODEL", help="train without MODEL, add it at serve time")
    generalise.add_argument("--ablate", default="", help="comma-separated: query, descriptors, parallel, checks, grpo")
    generalise.add_argument("--kfold", action="store_true",
                            help="five trainings, each holding out another fifth of every source; the folds pooled")
    generalise.add_argument("--fold0", default="", metavar="CHECKPOINT",
                            help="with --kfold: a checkpoint already trained with this config on the default split "
                                 "(e.g. the bundled one) as fold 0")
    generalise.set_defaults(run=cmd_generalise)
    learn_sim = sub.add_parser("learn-sim", help="simulate learning from traffic: a policy that never saw SOURCE "
                               "serves its prompts with feedback; APGR against requests served")
    learn_sim.add_argument("--start", required=True, help="checkpoint trained without the source")
    learn_sim.add_argument("--ceiling", default="", help="checkpoint trained with it (drawn as the ceiling)")
    learn_sim.add_argument("--source", required=True, help="a bundled outcome source (e.g. llmrouter)")
    learn_sim.add_argument("--out", type=_folder, required=True)
    learn_sim.add_argument("--requests", type=_at_least(1), default=500)
    learn_sim.add_argument("--every", type=_at_least(1), default=50, help="evaluate after every N requests")
    learn_sim.add_argument("--epsilon", type=_number(0.0, 1.0), default=0.1, help="exploration rate of the first call")
    learn_sim.add_argument("--seed", type=int, default=0)
    learn_sim.add_argument("--verdicts", choices=("returned", "called"), default="returned",
                           help="returned: a verdict on the answer given (thumbs); called: every answered call "
                           "scored (requests with a reference)")
    learn_sim.add_argument("--task", default="", help="serve and evaluate only this task family of the source "
                           "(a start trained with exclude_tasks: [SOURCE/TASK])")
    learn_sim.add_argument("--publish-gate", action="store_true",
                           help="learn as `xrouter learn` does every EVERY requests: a candidate serves only if the "
                           "publish rule passes on the newest 20%% of the verdicts not yet learned")
    learn_sim.add_argument("--fine-tune-epochs", type=_at_least(0), default=0,
                           help="also fit the network to every verdict so far (from the start's weights, the start's "
                           "own training data replayed beside them) every --fine-tune-every requests; 0: the outcome "
                           "memory alone learns; with --publish-gate, each candidate is fine-tuned as `xrouter learn` "
                           "does")
    learn_sim.add_argument("--fine-tune-every", type=_at_least(1), default=None,
                           help="requests between fine-tunes (default 100; with --publish-gate a candidate, "
                           "fine-tuned, every --every requests instead)")
    learn_sim.set_defaults(run=cmd_learn_sim)
    learn = sub.add_parser("learn", help="learn the verdicts of exported traffic into a copy of a checkpoint; "
                           "publish it only if it is not worse on held-back recent traffic")
    learn.add_argument("--start", required=True, help="the serving checkpoint (a compact policy with a memory)")
    learn.add_argument("--episodes", required=True, help="an `xrouter export-episodes` file (.jsonl or .jsonl.gz)")
    learn.add_argument("--out", type=_folder, required=True, help="folder for the candidate, publish.json and learn.prom")
    learn.add_argument("--catalog", default=os.environ.get("XROUTER_ADAPTERS_CATALOG", ""),
                       help="the serving catalog (default $XROUTER_ADAPTERS_CATALOG, else the bundled one)")
    learn.add_argument("--hold-out", type=_number(0.0, 1.0, open_ends=True), default=0.2,
                       help="newest share of the episodes held back")
    learn.add_argument("--clip", type=_number(1.0, 1e6), default=10.0, help="cap on importance weights")
    learn.add_argument("--min-matches", type=_at_least(1), default=20,
                       help="held-back episodes each policy must match before a comparison counts")
    learn.add_argument("--confidence", type=_number(0.0, 1.0, open_ends=True), default=0.9,
                       help="one-sided confidence of the bootstrap lower bound on candidate - serving value")
    learn.add_argument("--margin", type=_number(0.0, 1e6), default=0.02,
                       help="how far below the serving policy's value (reward units) that lower bound may lie")
    learn.add_argument("--fine-tune-epochs", type=_at_least(0), default=0,
                       help="also fit the candidate's network to the learned verdicts, the start's own training data "
                       "replayed beside them (training/xrouter_training/fine_tune.py); 0: the outcome memory alone "
                       "learns. The chart's learning CronJob uses learning.fineTuneEpochs")
    learn.add_argument("--store", default="", help="publish a passing candidate into this checkpoint store")
    learn.add_argument("--configmap", default=os.environ.get("XROUTER_TRAIN_POLICY_CONFIGMAP", ""))
    learn.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE", ""))
    learn.add_argument("--key", default=os.environ.get("XROUTER_TRAIN_POLICY_KEY", "checkpoint"))
    learn.add_argument("--router", action="append", default=[], metavar="HOST:PORT")
    learn.set_defaults(run=cmd_learn)
    rollback = sub.add_parser("rollback", help="go back to the previous policy: LoadPolicy(rollback) on each "
                              "router, and/or point the policy ConfigMap at an earlier version in the store")
    rollback.add_argument("--router", action="append", default=[], metavar="HOST:PORT")
    rollback.add_argument("--store", default="", help="the checkpoint store (with --to)")
    rollback.add_argument("--to", default="", metavar="VERSION", help="a version in the store to point at")
    rollback.add_argument("--configmap", default=os.environ.get("XROUTER_TRAIN_POLICY_CONFIGMAP", ""))
    rollback.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE", ""))
    rollback.add_argument("--key", default=os.environ.get("XROUTER_TRAIN_POLICY_KEY", "checkpoint"))
    rollback.set_defaults(run=cmd_rollback)
    bundle = sub.add_parser("bundle", help="write the small shipped copy of a checkpoint (encoder by hash)")
    bundle.add_argument("checkpoint")
    bundle.add_argument("--config", required=True, help="the training config that made it (recorded by hash)")
    bundle.add_argument("--out", type=_folder, default=str(BUNDLED_POLICY), help=f"default {BUNDLED_POLICY}")
    bundle.set_defaults(run=cmd_bundle)
    publish = sub.add_parser("publish", help="copy a checkpoint into the checkpoint store (atomically, verified) "
                             "and point the routers at it (policy-pointer ConfigMap and/or LoadPolicy)")
    publish.add_argument("checkpoint", help="checkpoint directory (e.g. OUT/checkpoint from `xrouter train`)")
    publish.add_argument("--store", required=True, help="checkpoint store folder (a path the routers mount too)")
    publish.add_argument("--configmap", default=os.environ.get("XROUTER_TRAIN_POLICY_CONFIGMAP", ""),
                         help="policy-pointer ConfigMap to patch (default $XROUTER_TRAIN_POLICY_CONFIGMAP; "
                         "empty: none)")
    publish.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE", ""),
                         help="the ConfigMap's namespace (default $POD_NAMESPACE, else the pod's or kubeconfig's)")
    publish.add_argument("--key", default=os.environ.get("XROUTER_TRAIN_POLICY_KEY", "checkpoint"),
                         help="the ConfigMap key the routers read (default checkpoint)")
    publish.add_argument("--router", action="append", default=[], metavar="HOST:PORT",
                         help="also push it with RouterService.LoadPolicy to this router (repeatable; needs an "
                         "admin key in $XROUTER_API_KEY)")
    publish.set_defaults(run=cmd_publish)
    from xrouter.metering.commands import add_parsers as add_metering_parsers

    add_metering_parsers(sub)  # `db upgrade|check`, `export-episodes`
    from xrouter.metering.key_commands import add_parsers as add_key_parsers

    add_key_parsers(sub)  # `keys create|list|rotate|revoke`
    return parser


def _folder(text: str) -> str:
    """An argparse type: an output folder ("" wrote into the current directory; a file failed late)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a folder (an empty one wrote into the current directory)")
    if pathlib.Path(text).exists() and not pathlib.Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} exists and is not a folder")
    return text


def _lambda_list(text: str) -> tuple[float, ...]:
    """An argparse type: comma-separated cost weights a request may carry (see bounds.lambda_list)."""
    from xrouter.router.core import MAX_COST_LAMBDA
    try:
        return bounds.lambda_list(text, high=MAX_COST_LAMBDA)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("--lambdas: ")) from None


def _at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``low`` (a bad one is argparse's usage error, status 2)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value
    return parse


def _number(low: float, high: float, open_ends: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number within [low, high] ((low, high) with ``open_ends``)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        inside = low < value < high if open_ends else low <= value <= high
        if not (math.isfinite(value) and inside):
            ends = f"({low:g}, {high:g})" if open_ends else f"[{low:g}, {high:g}]"
            raise argparse.ArgumentTypeError(f"must be within {ends}, got {text}")
        return value
    return parse


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except _input_errors() as error:
        # What the command line or the environment got wrong (an --out that is a file, a --url that
        # does not parse or answer, a span too long for a date): one line naming it, exit status 2,
        # where each was a traceback. XROUTER_TRACEBACK=1 shows the traceback as well.
        if os.environ.get("XROUTER_TRACEBACK"):
            raise
        print(f"xrouter {args.command}: {_described(error)}", file=sys.stderr)
        return 2


def _input_errors() -> tuple[type[BaseException], ...]:
    import sqlalchemy.exc

    from xrouter.common.errors import XRouterError

    # DatabaseError: a --url naming a file that is not a database; XRouterError: a refusal that
    # names its field (a checkpoint that is not one, an unknown source).
    errors: list[type[BaseException]] = [OSError, OverflowError, sqlalchemy.exc.ArgumentError,
                                         sqlalchemy.exc.OperationalError, sqlalchemy.exc.DatabaseError, XRouterError]
    try:
        from alembic.util.exc import CommandError  # `xrouter db upgrade --revision` that does not exist
        errors.append(CommandError)
    except ImportError:
        pass
    return tuple(errors)


def _described(error: BaseException) -> str:
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.filename}: {error.strerror or type(error).__name__}"
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return f"{first} ({type(error).__name__})"


if __name__ == "__main__":
    sys.exit(main())
