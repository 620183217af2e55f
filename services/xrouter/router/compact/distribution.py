"""The action distribution of a turn, shared by sampling (serving, rollouts) and by the GRPO loss,
so the log-probabilities the trainer optimises are exactly those the policy sampled from.

A turn is: on the final turn, select one answered model; otherwise first choose a model to call or
stop (stop only once something answered), then — having called a model and with others left —
whether to call one more in parallel, and which. Stopping selects one answered model.

The logit of calling one more model is the network's λ-free ``more`` minus the scaled λ·cost of the
cheapest model it could add (``penalty``): a larger λ never makes a second call more likely."""

from __future__ import annotations

import dataclasses

import torch

NEG = -1e9


@dataclasses.dataclass
class Masks:
    callable_: torch.Tensor  # [B, M] bool
    selectable: torch.Tensor  # [B, M] bool
    final: torch.Tensor  # [B] bool


@dataclasses.dataclass
class Actions:
    stop: torch.Tensor  # [B] bool (always true on a final turn)
    first: torch.Tensor  # [B] long, model called first (ignored when stop)
    more: torch.Tensor  # [B] long: -1 not offered, 0 no, 1 yes
    second: torch.Tensor  # [B] long, -1 when none
    select: torch.Tensor  # [B] long, -1 when not stopping


def _masked(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, logits, torch.full_like(logits, NEG))


def first_logits(out: dict[str, torch.Tensor], masks: Masks) -> torch.Tensor:
    """[B, M + 1]: call each model, then stop (last column)."""
    can_stop = masks.selectable.any(-1) & ~masks.final
    calls = _masked(out["call"], masks.callable_ & ~masks.final[:, None])
    return torch.cat([calls, _masked(out["stop"], can_stop)[:, None]], dim=-1)


def more_logit(out: dict[str, torch.Tensor], others: torch.Tensor) -> torch.Tensor:
    """[B]: the logit of a second parallel call, given the models ``others`` [B, M] it could be."""
    cheapest = torch.where(others, out["penalty"], torch.full_like(out["penalty"], float("inf"))).min(-1).values
    return out["more"] - torch.where(torch.isfinite(cheapest), cheapest, torch.zeros_like(cheapest))


def log_prob(out: dict[str, torch.Tensor], masks: Masks, actions: Actions) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each recorded turn [B] and the entropy of its first choice [B]."""
    m = out["call"].shape[1]
    first = torch.log_softmax(first_logits(out, masks), dim=-1)
    select = torch.log_softmax(_masked(out["select"], masks.selectable), dim=-1)
    first_index = torch.where(actions.stop, torch.full_like(actions.first, m), actions.first)
    logp = torch.where(masks.final, torch.zeros_like(out["stop"]), first.gather(1, first_index[:, None]).squeeze(1))
    logp = logp + torch.where(actions.stop, select.gather(1, actions.select.clamp(min=0)[:, None]).squeeze(1),
                              torch.zeros_like(logp))
    rest = masks.callable_.clone()
    rest[torch.arange(len(rest)), actions.first.clamp(min=0)] = False
    more_logits = more_logit(out, rest)
    more = torch.nn.functional.logsigmoid(torch.where(actions.more == 1, more_logits, -more_logits))
    logp = logp + torch.where(actions.more >= 0, more, torch.zeros_like(logp))
    second = torch.log_softmax(_masked(out["call"], rest), dim=-1)
    logp = logp + torch.where(actions.second >= 0, second.gather(1, actions.second.clamp(min=0)[:, None]).squeeze(1),
                              torch.zeros_like(logp))
    probs = first.exp()
    entropy = torch.where(masks.final, torch.zeros_like(logp), -(probs * first.clamp(min=NEG / 2)).sum(-1))
    return logp, entropy


def choose(out: dict[str, torch.Tensor], masks: Masks, greedy: bool, generator: torch.Generator | None,
           parallel_calls: bool = True) -> Actions:
    """Pick one turn's action for a batch of one decision (sampling, or the most likely choices);
    ``parallel_calls=False`` never offers a second call in the same turn."""
    def pick(logits: torch.Tensor) -> int:
        if greedy:
            return int(logits.argmax())
        return int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))

    m = out["call"].shape[1]
    final = bool(masks.final[0])
    stop, first, more, second, select = True, 0, -1, -1, -1
    if not final:
        choice = pick(first_logits(out, masks)[0])
        stop, first = choice == m, choice if choice < m else 0
    if stop:
        select = pick(_masked(out["select"], masks.selectable)[0])
    else:
        others = masks.callable_[0].clone()
        others[first] = False
        if others.any() and parallel_calls:
            p_more = torch.sigmoid(more_logit(out, others[None])[0])
            more = int(p_more > 0.5) if greedy else int(torch.rand((), generator=generator) < p_more)
            if more:
                second = pick(_masked(out["call"][0], others))
    as_tensor = lambda v: torch.tensor([v])  # noqa: E731
    return Actions(torch.tensor([stop]), as_tensor(first), as_tensor(more), as_tensor(second), as_tensor(select))


def choose_greedy(out: dict[str, torch.Tensor], masks: Masks, parallel_calls: bool = True) -> Actions:
    """The most likely action of each of B decisions at once: what :func:`choose` picks with
    ``greedy=True`` row by row, without a Python pass per decision (a batch of concurrent requests
    is decided in one go)."""
    rows, m = out["call"].shape
    final = masks.final
    choice = first_logits(out, masks).argmax(-1)
    stop = final | (choice == m)
    first = torch.where(stop, torch.zeros_like(choice), choice)
    select = torch.where(stop, _masked(out["select"], masks.selectable).argmax(-1), torch.full_like(choice, -1))
    others = masks.callable_.clone()
    others[torch.arange(rows), first] = False
    offered = ~stop & others.any(-1) if parallel_calls else torch.zeros_like(stop)
    wanted = torch.sigmoid(more_logit(out, others)) > 0.5
    more = torch.where(offered, wanted.long(), torch.full_like(choice, -1))
    second = torch.where(more == 1, _masked(out["call"], others).argmax(-1), torch.full_like(choice, -1))
    return Actions(stop, first, more, second, select)
