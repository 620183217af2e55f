"""Normalise the four recorded outcome sets of the shared data folder into the bundled, priced copies
under services/xrouter/data/ (outcome files and their catalogs). Deterministic: same input, same bytes.

    .venv/bin/python scripts/prepare_outcomes.py [--shared ../shared/data] [--out services/xrouter/data]

What it does (see services/xrouter/data/PROVENANCE.md for the reasoning and the figures):

* routerbench: copied row for row, minus the rows whose prompt text differs from the text every other
  model of that prompt_id received (5 gpt-3.5-turbo-1106 rows answer a doubled prompt); adds
  ``cost_estimated: false`` (every cost is the publisher's).
* routerarena: costs and tokens are recorded; scores below 0 (one, -0.033) are clipped to 0.
* arena (Arena-Hard bench v1): priced at list prices x tokens; prompt tokens estimated from the
  user turns, completion tokens from the response text, or for a row without text the median of
  that model's estimated completion tokens in the set (for a model with fewer than MIN_TEXTS
  recorded answers, the median of the other models' answers to the same prompt). Exact duplicate
  rows are dropped.
* llmrouter: a task family is derived per prompt from its text (``family``); the same
  (prompt_id, model) recorded twice (once in its train, once in its test split) becomes one row with
  the mean score; priced at the set's own NIM price table x tokens, prompt tokens estimated from the
  text, completion tokens the family's typical length measured on the routerarena/routerbench
  recordings of similar tasks (``REFERENCE_TASKS``).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import io
import json
import pathlib
import re
import statistics
import sys
from collections.abc import Iterable
from decimal import Decimal

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "services"))

from xrouter.adapters.token_count import estimate_tokens  # noqa: E402

FIELDS = ("source", "task", "prompt_id", "prompt", "gold", "model", "score", "response",
          "prompt_tokens", "completion_tokens", "cost_usd", "cost_estimated")

# --- llmrouter: task family from the prompt text ---------------------------------------------------
# The set's own `task` is only its train/test split, and its prompts carry no answer choices and no
# dataset id, so only families that the text itself gives away are told apart; the rule is ordered,
# the first match wins.
_WORD_LIST = re.compile(r"^[a-z]+(?:, [a-z]+){4,}$")
_LATEX = re.compile(r"\$[^$\n]+\$|\\\[|\[asy\]|\\frac|\\begin\{")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")


def family(prompt: str) -> str:
    """The task family of one llmrouter prompt (rule documented in PROVENANCE.md)."""
    text = prompt.strip()
    if re.match(r"Q: There are \w+ houses", text):
        return "logic-puzzle"  # zebra puzzles
    if "final answer in \\boxed" in prompt:
        return "math-word"  # GSM8K-style word problems with a boxed-answer instruction
    if _WORD_LIST.match(text):
        return "word-sort"  # a bare comma-separated list of lowercase words
    if re.match(r"(from typing import|import |def )", text) and '"""' in prompt:
        return "code"  # HumanEval-style function stub with docstring
    if re.match(r"Write a (python )?function", text):
        return "code"  # MBPP
    if _LATEX.search(prompt):
        return "math"  # competition maths (MATH) written in LaTeX
    if text.endswith("?") and len(_NUMBER.findall(text)) >= 3 and len(text) > 120:
        return "math-word"  # GSM8K word problems without the boxed instruction
    if len(text) > 500 or re.search(r"_\s*\.?$", text):
        return "reading"  # a passage with a question, or a fill-in-the-blank passage (RACE-style)
    if text[:1].islower() and not text.endswith("?") and len(text) < 120:
        return "open-qa"  # Natural Questions style search queries
    return "knowledge-qa"  # short factual / commonsense / science questions (trivia, ARC, GPQA, ...)


# Which recorded tasks stand for each family's completion length: routerarena tasks (real recorded
# completion tokens; a name ending in '*' is a prefix) and routerbench tasks (estimated from the
# recorded response text, as routerbench records no token counts).
REFERENCE_TASKS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "math-word": (("GSM8K", "AsDiv", "MathQA"), ()),
    "math": (("MATH", "AIME"), ()),
    "code": (("LiveCodeBench",), ("mbpp",)),
    "logic-puzzle": (("MMLU_formal_logic", "ChessInstruct"), ()),
    "reading": (("NarrativeQA", "SuperGLUE-RC", "PubMedQA"), ()),
    "open-qa": (("OpenTDB_*", "QANTA_*", "SuperGLUE-QA", "GeoGraphyData_100k"), ()),
    "knowledge-qa": (("ArcMMLU", "MMLUPro_*", "MedMCQA", "SocialiQA", "SuperGLUE-CausalReasoning"), ()),
}
# word-sort: the answer is the same words in order, so its completion is estimated as the prompt's
# own token count.

# --- prices ($ per 1M tokens, input/output) ------------------------------------------------------
# Arena-Hard bench v1 models absent from prices.routerarena.json (or listed there under another
# name/price): the providers' published list prices at the time (late 2023), as known to the
# author of this script and not re-checked against a price page; open models at a typical hosted
# rate for their size (the RouterBench catalog's rates for the same sizes).
ARENA_PRICES: dict[str, tuple[str, str, str]] = {
    # model: (input, output, where the price comes from)
    "gpt-4-0314": ("30", "60", "OpenAI list price of GPT-4 (8k), 2023"),
    "claude-1": ("8", "24", "Anthropic list price of Claude 1/2, 2023"),
    "claude-2": ("8", "24", "Anthropic list price of Claude 2, 2023"),
    "claude-2.1": ("8", "24", "Anthropic list price of Claude 2.1, Nov 2023"),
    "claude-instant-1": ("0.8", "2.4", "Anthropic list price of Claude Instant, Nov 2023"),
    "palm-2-chat-bison-001": ("1", "2", "Vertex AI chat-bison $0.00025/$0.0005 per 1k characters, "
                                        "late 2023, at 4 characters a token"),
    "Llama-2-70b-chat": ("0.9", "0.9", "typical hosted 70B rate (RouterBench catalog's llama-2-70b)"),
    "vicuna-33b-v1.3": ("0.8", "0.8", "typical hosted 30-34B rate (RouterBench catalog's Yi-34B)"),
    "llama-13b": ("0.3", "0.3", "typical hosted 13B rate (RouterBench catalog's WizardLM-13B)"),
    "Starling-LM-7B-alpha": ("0.2", "0.2", "typical hosted 7B rate (RouterBench catalog's mistral-7b)"),
    "openchat_3.5": ("0.2", "0.2", "typical hosted 7B rate (RouterBench catalog's mistral-7b)"),
}
# Arena models priced from prices.routerarena.json, by the name they have there.
ARENA_TABLE_NAMES = {
    "gpt-4-1106-preview": "gpt-4-1106-preview",
    "gpt-3.5-turbo-1106": "gpt-3.5-turbo-1106",
    "gpt-3.5-turbo": "gpt-3.5-turbo",
    "mistralai/Mixtral-8x7B-Instruct-v0.1": "mistralai/mixtral-8x7b-instruct",
    "mistralai/Mistral-7B-Instruct-v0.1": "mistralai/mistral-7b-instruct",
}

# --- catalog entries: (context_tokens, max_output_tokens, description, tags) ----------------------
ARENA_MODELS: dict[str, tuple[int, int, str, list[str]]] = {
    "gpt-4-1106-preview": (128000, 4096, "OpenAI GPT-4 Turbo (Nov 2023): the strongest model of the set, best at "
                           "reasoning, code and long chat answers; expensive.", ["premium", "reasoning", "code"]),
    "gpt-4-0314": (8192, 4096, "OpenAI GPT-4 (Mar 2023 snapshot): strong reasoning and writing; the most "
                   "expensive model of the set.", ["premium", "reasoning", "code"]),
    "gpt-3.5-turbo-1106": (16385, 4096, "OpenAI GPT-3.5 Turbo (Nov 2023): fast, cheap general chat model, decent "
                           "at code.", ["general", "code"]),
    "gpt-3.5-turbo": (4096, 4096, "OpenAI GPT-3.5 Turbo (mid-2023 snapshot): fast, cheap general chat model.",
                      ["general"]),
    "claude-1": (100000, 4096, "Anthropic Claude 1: strong general chat model, expensive.", ["premium", "general"]),
    "claude-2": (100000, 4096, "Anthropic Claude 2: long-context general chat model, expensive, verbose.",
                 ["premium", "general"]),
    "claude-2.1": (200000, 4096, "Anthropic Claude 2.1 (Nov 2023): 200k-context general chat model, expensive, "
                   "refuses more often than its peers.", ["premium", "general"]),
    "claude-instant-1": (100000, 4096, "Anthropic Claude Instant: fast, cheap general chat model.", ["general"]),
    "palm-2-chat-bison-001": (8192, 1024, "Google PaLM 2 chat-bison: mid-priced general chat model, short "
                              "answers, weaker on hard reasoning.", ["general"]),
    "mistralai/Mixtral-8x7B-Instruct-v0.1": (32768, 4096, "Mistral Mixtral 8x7B instruct: strong open "
                                             "mixture-of-experts model, cheap.", ["open", "general", "reasoning"]),
    "mistralai/Mistral-7B-Instruct-v0.1": (8192, 4096, "Mistral 7B instruct v0.1: very cheap small open model, "
                                           "brittle on hard questions.", ["open", "small"]),
    "Llama-2-70b-chat": (4096, 4096, "Meta Llama 2 70B chat: open-weights general chat model, hosted at a "
                         "moderate price.", ["open", "general"]),
    "vicuna-33b-v1.3": (2048, 2048, "LMSYS Vicuna 33B v1.3: open LLaMA-based chat model fine-tuned on "
                        "ShareGPT conversations, cheap.", ["open", "general"]),
    "llama-13b": (2048, 2048, "Meta LLaMA 13B (first generation, not chat-tuned): small cheap open model, "
                  "the weakest of the set.", ["open", "small"]),
    "Starling-LM-7B-alpha": (8192, 4096, "Berkeley Starling-LM 7B alpha: small open chat model tuned with "
                             "RLAIF, strong for its size, very cheap.", ["open", "small"]),
    "openchat_3.5": (8192, 4096, "OpenChat 3.5: small open 7B chat model (Mistral-based), strong for its "
                     "size, very cheap.", ["open", "small"]),
}
ROUTERARENA_MODELS: dict[str, tuple[int, int, str, list[str]]] = {
    "claude-3-haiku-20240307": (200000, 4096, "Anthropic Claude 3 Haiku (Mar 2024): fast, cheap small model of "
                                "the Claude 3 family, good at short factual answers.", ["general"]),
    "gemini-2.0-flash-001": (1048576, 8192, "Google Gemini 2.0 Flash: fast, very cheap general model with a "
                             "1M-token context, good at maths and reasoning for its price.", ["general", "reasoning"]),
    "gpt-4o-mini": (128000, 16384, "OpenAI GPT-4o mini (Jul 2024): small, very cheap general model, decent at "
                    "code.", ["general", "code"]),
    "mistral-medium": (128000, 8192, "Mistral Medium: mid-sized Mistral model, mid-priced, good at code and "
                       "reasoning.", ["general", "code"]),
}
LLMROUTER_MODELS: dict[str, tuple[int, int, list[str]]] = {
    "qwen2.5-7b-instruct": (32768, 4096, ["open", "small"]),
    "codegemma-7b": (8192, 4096, ["open", "small", "code"]),
    "gemma-2-9b-it": (8192, 4096, ["open", "small"]),
    "llama-3.1-8b-instruct": (128000, 4096, ["open", "small"]),
    "llama3-chatqa-1.5-8b": (8192, 4096, ["open", "small"]),
    "mistral-7b-instruct-v0.3": (32768, 4096, ["open", "small"]),
    "llama-3.3-nemotron-super-49b-v1": (128000, 4096, ["open", "general", "reasoning"]),
    "llama-3.1-nemotron-51b-instruct": (128000, 4096, ["open", "general"]),
    "llama3-chatqa-1.5-70b": (8192, 4096, ["open", "general"]),
}
# Corrections to the set's own feature texts (factual errors in the source).
FEATURE_FIXES = {"gemma-2-9b-it": ("2.9-billion", "9-billion")}


# --- I/O -------------------------------------------------------------------------------------------

def read_jsonl(path: pathlib.Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def write_jsonl(path: pathlib.Path, rows: Iterable[dict]) -> int:
    """Gzipped JSONL with mtime 0 and no file name in the header: same rows, same bytes."""
    buffer = io.BytesIO()
    count = 0
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=9) as handle:
        for row in rows:
            handle.write((json.dumps({k: row.get(k) for k in FIELDS}) + "\n").encode("utf-8"))
            count += 1
    path.write_bytes(buffer.getvalue())
    return count


def usd(prompt_tokens: int, completion_tokens: int, price_in: Decimal, price_out: Decimal) -> float:
    exact = (prompt_tokens * price_in + completion_tokens * price_out) / Decimal(1_000_000)
    return float(exact.quantize(Decimal("1e-12")))


def _median(values: list[int]) -> int:
    return int(statistics.median_low(values)) if values else 0


def _turns_text(prompt: str) -> str:
    """The user turns of a prompt recorded as a JSON list of turns, joined; else the prompt."""
    if prompt.startswith("["):
        try:
            turns = json.loads(prompt)
        except ValueError:
            return prompt
        if isinstance(turns, list) and all(isinstance(t, str) for t in turns):
            return "\n".join(turns)
    return prompt


def _merge_duplicates(rows: list[dict]) -> tuple[list[dict], int]:
    """One row per (prompt_id, model): the first, with the mean score of all its recordings."""
    groups: dict[tuple[str, str], list[dict]] = collections.defaultdict(list)
    for row in rows:
        groups[(row["prompt_id"], row["model"])].append(row)
    merged = []
    for group in groups.values():
        row = dict(group[0])
        if len(group) > 1:
            row["score"] = round(sum(float(r["score"]) for r in group) / len(group), 6)
            row["response"] = next((r["response"] for r in group if r.get("response") is not None), None)
        merged.append(row)
    return merged, len(rows) - len(merged)


def _by_prompt(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: (r["prompt_id"], r["model"]))


def _fmt(price: Decimal | str | float) -> str:
    text = format(Decimal(str(price)).normalize(), "f")
    return text if "." in text else text + ".0"


def write_catalog(path: pathlib.Path, dataset: str, header: str,
                  entries: list[tuple[str, Decimal, Decimal, int, int, str, list[str]]]) -> None:
    lines = [f"# {line}" if line else "#" for line in header.strip().splitlines()]
    lines.append("models:")
    for model, price_in, price_out, context, max_out, description, tags in entries:
        lines += [f"  - id: {json.dumps(model)}", "    backend: replay", f"    dataset: {dataset}",
                  f"    input_usd_per_mtok: \"{_fmt(price_in)}\"", f"    output_usd_per_mtok: \"{_fmt(price_out)}\"",
                  f"    context_tokens: {context}", f"    max_output_tokens: {max_out}",
                  f"    description: {json.dumps(description, ensure_ascii=False)}",
                  f"    tags: [{', '.join(tags)}]"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# --- the four sets ---------------------------------------------------------------------------------

def prepare_routerbench(shared: pathlib.Path, out: pathlib.Path) -> dict:
    rows = read_jsonl(shared / "routerbench.jsonl.gz")
    texts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for row in rows:
        texts[row["prompt_id"]][row["prompt"]] += 1
    usual = {pid: counter.most_common(1)[0][0] for pid, counter in texts.items()}
    kept = [dict(row, cost_estimated=False) for row in rows if row["prompt"] == usual[row["prompt_id"]]]
    count = write_jsonl(out / "routerbench.jsonl.gz", kept)  # source order kept
    return {"rows": count, "dropped_other_prompt_text": len(rows) - len(kept)}


def prepare_routerarena(shared: pathlib.Path, out: pathlib.Path) -> dict:
    rows = read_jsonl(shared / "routerarena.jsonl.gz")
    clipped = 0
    for row in rows:
        if row["score"] < 0 or row["score"] > 1:
            row["score"] = min(1.0, max(0.0, float(row["score"])))
            clipped += 1
        row["cost_estimated"] = False
    rows, merged = _merge_duplicates(rows)
    count = write_jsonl(out / "routerarena.jsonl.gz", _by_prompt(rows))
    prices = json.loads((shared / "prices.routerarena.json").read_text(encoding="utf-8"))
    entries = []
    for model in sorted({r["model"] for r in rows}, key=lambda m: (m not in ROUTERARENA_MODELS, m)):
        context, max_out, description, tags = ROUTERARENA_MODELS[model]
        price = prices[model]
        entries.append((model, Decimal(str(price["input_token_price_per_million"])),
                        Decimal(str(price["output_token_price_per_million"])), context, max_out, description, tags))
    write_catalog(out / "catalog.routerarena.yaml", "routerarena", """
RouterArena's models, answered by replay of their recorded outcomes (routerarena.jsonl.gz).
Prices: prices.routerarena.json (the set's list prices, USD per 1M tokens); the recorded cost of
every row equals recorded tokens x these prices. Generated by scripts/prepare_outcomes.py.
""", entries)
    return {"rows": count, "clipped_scores": clipped, "merged_duplicates": merged}


MIN_TEXTS = 20  # a model needs this many recorded answers for its own median length to be used


def prepare_arena(shared: pathlib.Path, out: pathlib.Path) -> dict:
    rows = read_jsonl(shared / "arena_bench_v1.jsonl.gz")
    rows, merged = _merge_duplicates(rows)
    table = json.loads((shared / "prices.routerarena.json").read_text(encoding="utf-8"))
    prices: dict[str, tuple[Decimal, Decimal, str]] = {}
    for model, name in ARENA_TABLE_NAMES.items():
        entry = table[name]
        prices[model] = (Decimal(str(entry["input_token_price_per_million"])),
                         Decimal(str(entry["output_token_price_per_million"])),
                         f"prices.routerarena.json ({name})")
    for model, (price_in, price_out, origin) in ARENA_PRICES.items():
        prices[model] = (Decimal(price_in), Decimal(price_out), f"list price, not from the data: {origin}")
    lengths: dict[str, list[int]] = collections.defaultdict(list)
    for row in rows:
        if row.get("response") is not None:
            lengths[row["model"]].append(estimate_tokens(row["response"]))
    typical = {model: _median(values) for model, values in lengths.items() if len(values) >= MIN_TEXTS}
    per_prompt: dict[str, list[int]] = collections.defaultdict(list)
    for row in rows:
        if row.get("response") is not None:
            per_prompt[row["prompt_id"]].append(estimate_tokens(row["response"]))
    overall = _median([n for values in lengths.values() for n in values])
    no_text = 0
    for row in rows:
        price_in, price_out, _ = prices[row["model"]]
        prompt_tokens = estimate_tokens(_turns_text(row["prompt"]))
        if row.get("response") is not None:
            completion = estimate_tokens(row["response"])
        else:
            # The model's own typical length; for a model with (almost) no recorded text in the set
            # (gpt-4-0314, openchat_3.5), the median length of the other models' answers to this prompt.
            completion = typical.get(row["model"]) or _median(per_prompt[row["prompt_id"]]) or overall
            no_text += 1
        row.update(source="arena", cost_usd=usd(prompt_tokens, completion, price_in, price_out), cost_estimated=True)
    count = write_jsonl(out / "arena.jsonl.gz", _by_prompt(rows))
    entries = []
    for model in ARENA_MODELS:
        if model in {r["model"] for r in rows}:
            context, max_out, description, tags = ARENA_MODELS[model]
            entries.append((model, prices[model][0], prices[model][1], context, max_out, description, tags))
    origins = "\n".join(f"  {model}: {prices[model][2]}" for model in ARENA_MODELS)
    write_catalog(out / "catalog.arena.yaml", "arena", f"""
The 16 chat models of Arena-Hard bench v1, answered by replay of their recorded answers (arena.jsonl.gz).
The set records no cost: prices are USD per 1M tokens, from prices.routerarena.json where it lists
the model, else the provider's published list price at the time as the preparer knew it (not from
the data; marked below). Generated by scripts/prepare_outcomes.py.
{origins}
""", entries)
    return {"rows": count, "merged_duplicates": merged, "rows_without_text": no_text,
            "median_completion_tokens": dict(sorted(typical.items()))}


def family_lengths(shared: pathlib.Path) -> dict[str, int]:
    """Each family's typical completion tokens, measured on the reference recordings."""
    arena_rows = read_jsonl(shared / "routerarena.jsonl.gz")
    bench_rows = read_jsonl(shared / "routerbench.jsonl.gz")

    def wanted(task: str, names: tuple[str, ...]) -> bool:
        return any(task.startswith(n[:-1]) if n.endswith("*") else task == n for n in names)

    lengths = {}
    for fam, (arena_tasks, bench_tasks) in REFERENCE_TASKS.items():
        values = [r["completion_tokens"] for r in arena_rows
                  if wanted(r["task"], arena_tasks) and r["completion_tokens"] is not None]
        values += [estimate_tokens(r["response"]) for r in bench_rows
                   if wanted(r["task"], bench_tasks) and r.get("response")]
        lengths[fam] = _median(values)
    return lengths


def prepare_llmrouter(shared: pathlib.Path, out: pathlib.Path) -> dict:
    rows = read_jsonl(shared / "llmrouter.jsonl.gz")
    rows, merged = _merge_duplicates(rows)
    table = json.loads((shared / "llmrouter.models.json").read_text(encoding="utf-8"))
    lengths = family_lengths(shared)
    families: collections.Counter = collections.Counter()
    for row in rows:
        fam = family(row["prompt"])
        prompt_tokens = estimate_tokens(row["prompt"])
        completion = prompt_tokens if fam == "word-sort" else lengths[fam]
        entry = table[row["model"]]
        cost = usd(prompt_tokens, completion, Decimal(str(entry["input_price"])), Decimal(str(entry["output_price"])))
        row.update(task=fam, cost_usd=cost, cost_estimated=True)
        families[fam] += 1
    count = write_jsonl(out / "llmrouter.jsonl.gz", _by_prompt(rows))
    entries = []
    present = {r["model"] for r in rows}
    for model, (context, max_out, tags) in LLMROUTER_MODELS.items():
        if model not in present:
            continue
        entry = table[model]
        feature = entry["feature"]
        if model in FEATURE_FIXES:
            feature = feature.replace(*FEATURE_FIXES[model])
        first = feature.split(". ")[0].rstrip(".")
        description = (f"{first}; served on NVIDIA NIM at ${_fmt(entry['input_price'])}/"
                       f"${_fmt(entry['output_price'])} per 1M input/output tokens.")
        entries.append((model, Decimal(str(entry["input_price"])), Decimal(str(entry["output_price"])),
                        context, max_out, description, tags))
    write_catalog(out / "catalog.llmrouter.yaml", "llmrouter", """
LLMRouter's 9 open models (NVIDIA NIM), answered by replay (llmrouter.jsonl.gz records scores only:
every answer is a marked placeholder graded with its recorded score). Prices: the set's own
llmrouter.models.json input_price/output_price (USD per 1M tokens); descriptions: the first sentence
of its `feature` text (its price sentence dropped: it disagrees with the price fields for qwen2.5).
Generated by scripts/prepare_outcomes.py.
""", entries)
    return {"rows": count, "merged_duplicates": merged, "families": dict(sorted(families.items())),
            "family_completion_tokens": dict(sorted(lengths.items()))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=pathlib.Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=pathlib.Path, default=REPO / "services" / "xrouter" / "data")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "routerbench": prepare_routerbench(args.shared, args.out),
        "routerarena": prepare_routerarena(args.shared, args.out),
        "arena": prepare_arena(args.shared, args.out),
        "llmrouter": prepare_llmrouter(args.shared, args.out),
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
