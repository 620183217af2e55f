"""``xrouter learn``: a better checkpoint from the router's own traffic, published only if it is
not worse on traffic it never learned from.

1. Read an export (``xrouter export-episodes``, schema ``xrouter.episode/v1``). An episode teaches
   when it has a verdict on the answer it returned — the user's feedback, else the reward
   service's score of a request that carried a reference — and its prompt text (the stored
   messages, or a bundled data set's item named by ``prompt``). Every other episode is counted
   under the reason it was not used; none is dropped silently.
2. Oldest first, the newest ``hold_out`` share is held back. The rest go into a copy of the start
   checkpoint's outcome memory (``record_verdicts``: local evidence on a model the memory knows, a
   calibration residual on one it does not); with ``fine_tune_epochs`` the candidate's network is
   also fitted to them (fine_tune.py: the warm start's loss). Same trainer, same checkpoint format.
   Episodes whose verdicts the start already holds (its ``learned_requests.json``: a daily run over
   the last 7 days starts from yesterday's candidate) are counted as skipped, never learned twice.
3. Candidate and start are compared on the held-back episodes by the publish rule
   (``publish_rule.py``): their off-policy values, paired by a bootstrap of the same episodes; the
   candidate is published when it matches at least ``min_matches`` held-back episodes (and so does
   the start) and the ``1 − confidence`` quantile of (candidate − start) is at least ``−margin``.
   Its numbers and the decision go to ``OUT/publish.json`` and to ``OUT/learn.prom`` (Prometheus
   text format, for a node exporter's textfile collector or a Pushgateway); a candidate that fails
   the rule is written but never published.
4. Publishing is ``xrouter publish``'s: an atomic, verified copy into the store, then the routers
   are pointed at it; ``xrouter rollback`` goes back. A Job that dies before step 4 has touched
   nothing the routers read.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import json
import math
import pathlib
import shutil
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from xrouter.router.checkpoint_manifest import sha256, write_manifest
from xrouter.router.compact.checkpoint import LEARNED_REQUESTS as LEARNED, WEIGHTS, load_policy, read_manifest
from xrouter.router.compact.memory import FILE as MEMORY
from xrouter.router.compact.policy import CompactPolicy
from xrouter.router.policy import ModelOption
from xrouter_training.episodes_file import read_episodes
from xrouter_training.publish_rule import CLIP, CONFIDENCE, HOLD_OUT, MARGIN, MIN_MATCHES, PUBLISH, judge


@dataclasses.dataclass(frozen=True)
class Lesson:
    """One usable episode: the prompt, the model whose answer was returned, its verdict, and what
    the logged reward needs (λ, the request's cost, the behaviour probability of its first call)."""

    request_id: str
    settled_at: str
    text: str
    first_model: str
    returned_model: str
    verdict: float
    cost_lambda: float
    cost_usd: float
    behaviour_probability: float

    @property
    def reward(self) -> float:
        return self.verdict - self.cost_lambda * self.cost_usd


def prompt_texts(datasets: Iterable[str]) -> dict[tuple[str, str], str]:
    """(dataset, prompt_id) → text for the bundled outcome sets named (episodes that stored no messages)."""
    from xrouter.common.outcomes import SOURCES, read_outcomes

    texts = {}
    for name in set(datasets) & set(SOURCES):
        for row in read_outcomes(SOURCES[name].data):
            texts[(name, row.prompt_id)] = row.prompt
    return texts


def lessons(episodes: Sequence[Mapping[str, Any]]) -> tuple[list[Lesson], dict[str, list[str]]]:
    """The usable episodes, oldest first, and {reason: request ids} of the others."""
    texts = prompt_texts({e["prompt"]["dataset"] for e in episodes if e.get("prompt")})
    used, skipped = [], collections.defaultdict(list)
    for episode in episodes:
        request_id = episode["request_id"]
        feedback = episode.get("feedback")
        verdict = feedback["score"] if feedback else episode.get("score")
        returned = episode.get("returned_call")
        text = next((m["content"] for m in reversed(episode.get("messages") or []) if m["role"] == "user"), None)
        if text is None and episode.get("prompt"):
            text = texts.get((episode["prompt"]["dataset"], episode["prompt"]["prompt_id"]))
        reason = ("failed" if episode.get("outcome", "ok") != "ok" else
                  "no verdict (neither feedback nor a reference score)" if verdict is None else
                  "no returned call (a direct answer or a synthesis)" if not returned else
                  "no prompt text (messages not stored, prompt not a bundled data set item)" if text is None else
                  "no cost preference (cost_lambda) recorded" if episode.get("cost_lambda") is None else
                  "no first call" if not episode.get("calls") else "")
        if reason:
            skipped[reason].append(request_id)
            continue
        exploration = episode.get("exploration")
        used.append(Lesson(request_id, episode["settled_at"], text, episode["calls"][0]["model"], returned["model"],
                           float(verdict), float(episode["cost_lambda"]), episode["cost_micro_usd"] / 1e6,
                           float(exploration["first_call_probability"]) if exploration else 1.0))
    used.sort(key=lambda lesson: (lesson.settled_at, lesson.request_id))
    return used, dict(skipped)


def learned_requests(checkpoint: pathlib.Path) -> dict[str, str]:
    """{request_id: settled_at} of the verdicts already in ``checkpoint``'s memory (none for a
    checkpoint that never learned from traffic)."""
    path = checkpoint / LEARNED
    return json.loads(path.read_text())["request_ids"] if path.exists() else {}


def hold_back(used: Sequence[Lesson], hold_out: float = HOLD_OUT) -> tuple[list[Lesson], list[Lesson]]:
    """(to learn, held back): the newest ``hold_out`` share of ``used`` (oldest first), at least one."""
    cut = len(used) - max(1, round(hold_out * len(used))) if used else 0
    return list(used[:cut]), list(used[cut:])


def _fine_tune(start: pathlib.Path, candidate: CompactPolicy, train: Sequence[Lesson], pool: Sequence[ModelOption],
               epochs: int) -> dict[str, Any] | None:
    """The candidate's network fitted to the learned verdicts (None: not asked); too few verdicts
    to fine-tune on is said in the record, not skipped silently."""
    if not epochs:
        return None
    if len(train) < 2:
        return {"skipped": f"{len(train)} verdict(s) to learn: fine-tuning needs at least two"}
    import asyncio

    from xrouter_training.fine_tune import Verdicts, fine_tune, replay_environment

    verdicts = [Verdicts(lesson.text, {lesson.returned_model: lesson.verdict}) for lesson in train]
    report = asyncio.run(fine_tune(candidate, verdicts, pool, replay_environment(read_manifest(start)), epochs))
    return {key: value for key, value in report.items() if not isinstance(value, dict)}


def write_candidate(start: pathlib.Path, policy: CompactPolicy, out: pathlib.Path, learned: int,
                    requests: Mapping[str, str], fine_tuned: Mapping[str, Any] | None = None) -> pathlib.Path:
    """A copy of ``start`` whose memory holds the learned verdicts, and ``requests`` (the ids whose
    verdicts it holds), with the policy's own weights when they were fine-tuned; manifest last
    (never half-written)."""
    manifest = read_manifest(start)
    target = out / "checkpoint"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    weights = fine_tuned is not None and "skipped" not in fine_tuned
    for name in manifest["sha256"]:
        if name not in (MEMORY, LEARNED) and not (weights and name == WEIGHTS):
            shutil.copyfile(start / name, target / name)
    (target / LEARNED).write_text(json.dumps({"request_ids": dict(requests)}, sort_keys=True))
    hashes = {**manifest["sha256"], MEMORY: sha256(policy.memory.save(target)), LEARNED: sha256(target / LEARNED)}
    if weights:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in policy.network.state_dict().items()}, str(target / WEIGHTS))
        hashes[WEIGHTS] = sha256(target / WEIGHTS)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d%H%M%S")
    fields = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    write_manifest(target, {**fields, "sha256": hashes, "version": f"{manifest['version']}.learn{stamp}",
                            "learned_from_traffic": {"start": manifest["version"], "verdicts": learned,
                                                     "fine_tuned": dict(fine_tuned) if fine_tuned else None}})
    return target


def catalog_options(path: str | pathlib.Path = "") -> list[ModelOption]:
    """The pool a router serving ``path`` (default: the bundled catalog) routes among."""
    from xrouter.adapters.catalog import load_catalog
    from xrouter.adapters.settings import DEFAULT_CATALOG

    return [ModelOption(s.id, float(s.input_usd_per_mtok), float(s.output_usd_per_mtok), s.description, s.tags,
                        s.context_tokens) for s in load_catalog(path or DEFAULT_CATALOG).values()]


def learn(start: pathlib.Path, episodes_path: pathlib.Path, out: pathlib.Path, catalog: Sequence[ModelOption],
          hold_out: float = HOLD_OUT, clip: float = CLIP, min_matches: int = MIN_MATCHES,
          confidence: float = CONFIDENCE, margin: float = MARGIN, fine_tune_epochs: int = 0) -> dict[str, Any]:
    """Steps 1-3 of the module docstring; returns the publish record (also written to OUT).
    ``fine_tune_epochs``: also fit the candidate's network to the learned verdicts (fine_tune.py;
    0: the memory alone learns)."""
    if not 0 < hold_out < 1:
        raise ValueError(f"hold_out={hold_out}: a share strictly between 0 and 1")
    if not (math.isfinite(clip) and clip >= 1):
        raise ValueError(f"clip={clip}: an importance-weight cap of at least 1")
    if not 0.5 <= confidence < 1:
        raise ValueError(f"confidence={confidence}: a probability in [0.5, 1)")
    if not (math.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin={margin}: a reward difference of at least 0")
    if fine_tune_epochs < 0:
        raise ValueError(f"fine_tune_epochs={fine_tune_epochs}: 0 (memory only) or more")
    used, skipped = lessons(read_episodes(episodes_path))
    out.mkdir(parents=True, exist_ok=True)
    # The export window overlaps the last run's (a daily job over the last 7 days): verdicts the start
    # already holds are not learned again, or each would count up to seven times.
    already = learned_requests(start)
    window_start = min((lesson.settled_at for lesson in used), default="")
    for lesson in [lesson for lesson in used if lesson.request_id in already]:
        skipped.setdefault("already learned by the start checkpoint", []).append(lesson.request_id)
        used.remove(lesson)
    known = {option.id: option for option in catalog}
    for lesson in list(used):
        if lesson.returned_model not in known or lesson.first_model not in known:
            skipped.setdefault("a model not in the catalog", []).append(lesson.request_id)
            used.remove(lesson)
    train, held_out = hold_back(used, hold_out)
    serving = load_policy(start, list(catalog))
    candidate = load_policy(start, list(catalog))
    if candidate.memory is None:
        raise ValueError(f"{start}: a checkpoint without an outcome memory cannot learn from traffic")
    pool = list(catalog)
    for lesson in train:
        candidate.record_verdicts(lesson.text, [known[lesson.returned_model]], {lesson.returned_model: lesson.verdict})
    tuned = _fine_tune(start, candidate, train, pool, fine_tune_epochs)
    # Ids settled before this export's window cannot come back in a later export (windows move
    # forward), so they are forgotten: the list stays as long as one window.
    remembered = {request_id: at for request_id, at in already.items() if at >= window_start}
    remembered.update((lesson.request_id, lesson.settled_at) for lesson in train)
    target = write_candidate(start, candidate, out, len(train), remembered, tuned)
    before, after, difference, decision = judge(serving, candidate, pool, held_out, clip, min_matches, confidence,
                                                margin)
    passed = decision == PUBLISH
    record = {
        "rule": f"publish when the candidate and the serving policy each match >= {min_matches} held-back episodes "
                f"and, over bootstrap resamples of those episodes, the {confidence:.0%} lower bound of the candidate's "
                "minus the serving policy's self-normalised importance-weighted value (verdict - lambda*cost, weights "
                f"1/behaviour probability clipped at {clip}) is >= -{margin}",
        "start": str(start), "candidate": str(target), "episodes": str(episodes_path),
        "learned_verdicts": len(train), "held_out": len(held_out), "fine_tuned": tuned,
        "skipped": {reason: {"count": len(ids), "request_ids": ids[:20]} for reason, ids in skipped.items()},
        "serving": before, "candidate_value": after, "difference": difference,
        "decision": decision,
        "at": datetime.datetime.now(datetime.UTC).isoformat()}
    (out / "publish.json").write_text(json.dumps(record, indent=2, default=float))
    (out / "learn.prom").write_text(
        "# HELP xrouter_learn_value Off-policy value on held-back traffic (verdict - lambda*cost).\n"
        "# TYPE xrouter_learn_value gauge\n"
        f'xrouter_learn_value{{policy="serving"}} {before["value"]}\n'
        f'xrouter_learn_value{{policy="candidate"}} {after["value"]}\n'
        "# HELP xrouter_learn_difference_lower_bound The rule's lower bound on candidate - serving value.\n"
        "# TYPE xrouter_learn_difference_lower_bound gauge\n"
        f"xrouter_learn_difference_lower_bound {difference['lower_bound']}\n"
        "# HELP xrouter_learn_published 1 when the last candidate passed the publish rule.\n"
        "# TYPE xrouter_learn_published gauge\n"
        f"xrouter_learn_published {int(passed)}\n")
    return record


def check_publish_flags(store: str, routers: Sequence[str]) -> None:
    """The publishing flags, checked whether or not this run's candidate will pass. (--configmap is
    not: it defaults from the environment, and without --store nothing is published.)"""
    from xrouter.common.errors import InvalidArgument

    if store and pathlib.Path(store).exists() and not pathlib.Path(store).is_dir():
        raise InvalidArgument("--store", f"{store} is not a directory (the checkpoint store)")
    for router in routers:
        host, _, port = router.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidArgument("--router", f"{router!r} is not HOST:PORT")


def run_cli(args: Any) -> int:
    """``xrouter learn`` (arguments in xrouter/cli.py): 0 when it ran (published or not), 2 on bad input,
    1 when publishing a passing candidate failed."""
    import sys

    from xrouter.adapters.catalog import CatalogError
    from xrouter.common.errors import InvalidArgument
    from xrouter_training.publish import PublishError, publish

    out = pathlib.Path(args.out)
    try:
        check_publish_flags(args.store, args.router)  # before learning, not only when it passes
        options = catalog_options(args.catalog)
        record = learn(pathlib.Path(args.start), pathlib.Path(args.episodes), out, options, args.hold_out, args.clip,
                       args.min_matches, args.confidence, args.margin, args.fine_tune_epochs)
    except (ValueError, OSError, CatalogError, InvalidArgument) as error:
        print(f"xrouter learn: {getattr(error, 'message', error)}", file=sys.stderr)
        return 2
    print(f"learned {record['learned_verdicts']} verdicts; held back {record['held_out']}: serving "
          f"{record['serving']['value']:.4f} ({record['serving']['matches']} matched), candidate "
          f"{record['candidate_value']['value']:.4f} ({record['candidate_value']['matches']} matched), difference "
          f"{record['difference']['estimate']:+.4f} (lower bound {record['difference']['lower_bound']:+.4f}) -> "
          f"{record['decision']}; {out / 'publish.json'}", flush=True)
    for reason, skipped in record["skipped"].items():
        print(f"  not used: {skipped['count']} episode(s): {reason}")
    tuned = record["fine_tuned"]
    if tuned:
        print(f"  fine-tuning: {tuned['skipped']}" if "skipped" in tuned else
              f"  fine-tuned on {tuned['lessons']} verdicts and {tuned['replayed_prompts']} replayed prompts "
              f"(epoch {tuned['best_epoch']} of {tuned['epochs']} kept)")
    if record["decision"] != PUBLISH or not args.store:
        return 0
    try:
        publish(record["candidate"], args.store, configmap=args.configmap, namespace=args.namespace, key=args.key,
                routers=args.router)
    except PublishError as error:
        print(f"xrouter learn: {error}", file=sys.stderr)
        return 1
    return 0
