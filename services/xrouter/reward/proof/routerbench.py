"""RouterBench multiple choice: does the letter extractor grade real model answers as the
publisher did? The set records 0/1 labels but no gold letter, so each prompt's gold is inferred
from the answers recorded as correct (the letter most of them pick)."""

from __future__ import annotations

import collections
from typing import Any

from xrouter.common.outcomes import ROUTERBENCH, Outcome, read_outcomes
from xrouter.reward.verifiers import extract_choice, multiple_choice

OPTIONS = {"arc-challenge": "ABCDE", "winogrande": "AB"}


def agreement(rows: list[Outcome] | None = None) -> dict[str, Any]:
    """Agreement of ``multiple_choice`` with the recorded labels, and every disagreement."""
    by_prompt: dict[str, list[Outcome]] = collections.defaultdict(list)
    for row in rows if rows is not None else read_outcomes(ROUTERBENCH):
        if row.task in OPTIONS:
            by_prompt[row.prompt_id].append(row)
    agree = total = 0
    no_correct = split_gold = 0
    disagreements = []
    for prompt_id, answers in sorted(by_prompt.items()):
        options = OPTIONS[answers[0].task]
        picked = collections.Counter(extract_choice(r.response, options) for r in answers if r.score)
        picked.pop(None, None)
        if not picked:
            no_correct += 1  # nobody was right (or no right answer names a letter): no gold
            continue
        ranked = picked.most_common()
        split_gold += len(ranked) > 1
        gold = ranked[0][0]
        for row in answers:
            total += 1
            verdict = multiple_choice(row.response or "", gold, options)
            if verdict.score == row.score:
                agree += 1
            else:
                disagreements.append({
                    "prompt_id": prompt_id, "task": row.task, "model": row.model,
                    "recorded": row.score, "ours": verdict.score, "detail": verdict.detail,
                    "gold_votes": dict(picked), "response": (row.response or "")[:400]})
    return {"rows": total, "agree": agree, "agreement": agree / total if total else 0.0,
            "prompts": len(by_prompt), "prompts_without_a_correct_letter": no_correct,
            "prompts_whose_correct_answers_pick_several_letters": split_gold,
            "disagreements": disagreements}
