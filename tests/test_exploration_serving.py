"""Issue 17: serving-side exploration per tenant, off by default. A tenant with a rate above 0 gets
the compact policy wrapped with router/exploration.py's ε-uniform first call, and its settled
requests carry the behaviour probability of that call (exported for off-policy correction); every
other tenant is served exactly as before. Bad settings stop the router at start, naming the
variable. Real gRPC servers, the bundled learned policy, a SQLite ledger."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import pytest_asyncio

from xrouter.common import settings
from xrouter.local_stack import InProcessStack, sqlite_url
from xrouter.metering import export
from xrouter.router.core import RouteRequest
from xrouter.router.exploration import ExploringPolicy
from xrouter.router.policy import CallModels, EpisodeState
from xrouter.router.policy_store import BUNDLED_POLICY
from xrouter.router.settings import RouterSettings

pytestmark = pytest.mark.skipif(not BUNDLED_POLICY.is_dir(), reason="no bundled policy in this checkout")
ON_THE_STACK = pytest.mark.asyncio(loop_scope="module")  # the module's stack lives on the module's loop

TARGETS = {"XROUTER_ROUTER_ADAPTERS_TARGET": "127.0.0.1:1", "XROUTER_ROUTER_METERING_TARGET": "127.0.0.1:2"}


@pytest.mark.parametrize(("variable", "value", "says"), [
    ("XROUTER_ROUTER_EXPLORATION_EPSILON", "1.5", "within [0, 1], got 1.5"),
    ("XROUTER_ROUTER_EXPLORATION_EPSILON", "-0.1", "within [0, 1]"),
    ("XROUTER_ROUTER_EXPLORATION_EPSILON", "nan", "within [0, 1], got nan"),
    ("XROUTER_ROUTER_EXPLORATION_EPSILON", "often", "must be a number"),
    ("XROUTER_ROUTER_EXPLORATION_TENANTS", "acme", "'acme' is not tenant=rate"),
    ("XROUTER_ROUTER_EXPLORATION_TENANTS", "acme=lots", "the rate must be a number"),
    ("XROUTER_ROUTER_EXPLORATION_TENANTS", "acme=2", "(acme) must be an exploration rate within [0, 1]"),
    ("XROUTER_ROUTER_EXPLORATION_TENANTS", "acme=0.1,acme=0.2", "tenant 'acme' is named twice"),
    ("XROUTER_ROUTER_EXPLORATION_TENANTS", "a cme=0.1", "characters outside"),
])
def test_bad_exploration_settings_are_refused_naming_the_variable(variable: str, value: str, says: str) -> None:
    with pytest.raises(settings.SettingsError) as caught:
        settings.load(RouterSettings, {**TARGETS, variable: value})
    assert str(caught.value).startswith(variable) and says in str(caught.value)


def test_the_settings_parse_and_default_to_no_exploration() -> None:
    assert settings.load(RouterSettings, TARGETS).limits().exploration.rate("anyone") == 0.0
    rates = settings.load(RouterSettings, {**TARGETS, "XROUTER_ROUTER_EXPLORATION_EPSILON": "0.01",
                                           "XROUTER_ROUTER_EXPLORATION_TENANTS": " acme=0.05, globex=0 "}).limits().exploration
    assert (rates.rate("acme"), rates.rate("globex"), rates.rate("initech")) == (0.05, 0.0, 0.01)


def test_the_router_process_will_not_start_with_a_bad_rate() -> None:
    result = subprocess.run([sys.executable, "-m", "xrouter.router"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, **TARGETS, "XROUTER_ROUTER_EXPLORATION_TENANTS": "acme=5"})
    assert result.returncode != 0
    assert "XROUTER_ROUTER_EXPLORATION_TENANTS (acme) must be an exploration rate within [0, 1]" in result.stderr


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory):  # type: ignore[no-untyped-def]
    # "explorer" always explores (ε = 1: every first call drawn), so that one run shows it; the
    # default rate stays 0, so every other tenant must be served as without the setting.
    running = await InProcessStack(sqlite_url(tmp_path_factory.mktemp("exploration")), policy=str(BUNDLED_POLICY),
                                   router_env={"XROUTER_ROUTER_EXPLORATION_TENANTS": "explorer=1,quiet=0"}).start()
    yield running
    await running.stop()


@pytest.fixture(scope="module")
def prompts(recorded, stack) -> list[str]:  # type: ignore[no-untyped-def]
    """RouterBench prompts every catalog model has a recorded answer for."""
    models = set(stack.router_core.catalog)
    return [row[""] for row in recorded.values() if models <= set(row)][:8]


def greedy_state(stack: InProcessStack, prompt: str) -> EpisodeState:
    """The first state the router builds for a plain request (whole catalog, default λ and turns)."""
    limits = stack.router_core.limits
    return EpisodeState([("user", prompt)], list(stack.router_core.catalog.values()), limits.default_cost_lambda,
                        None, limits.default_max_turns, 0)


async def first_choice(stack: InProcessStack, prompt: str) -> str:
    action = await stack.router_core.policy.decide(greedy_state(stack, prompt))
    assert isinstance(action, CallModels)
    return action.calls[0].model


@ON_THE_STACK
async def test_exploration_at_zero_decides_exactly_as_the_policy(stack, prompts) -> None:  # type: ignore[no-untyped-def]
    policy = stack.router_core.policy
    wrapped = ExploringPolicy(policy, 0.0, seed=1)
    for prompt in prompts:
        assert await wrapped.decide(greedy_state(stack, prompt)) == await policy.decide(greedy_state(stack, prompt))
    assert all(not entry.explored and entry.probability == 1.0 for entry in wrapped.log)


@ON_THE_STACK
@pytest.mark.parametrize("tenant", ["anyone", "quiet"])  # the default rate (0), and an explicit 0
async def test_tenants_without_exploration_get_the_policys_decisions_and_record_none(
        stack, prompts, tenant) -> None:  # type: ignore[no-untyped-def]
    for prompt in prompts:
        result = await stack.router_core.route(RouteRequest([("user", prompt)], tenant=tenant))
        assert result.calls[0].model == await first_choice(stack, prompt)
    episodes = list(export.episodes(stack.ledger.engine, tenant=tenant))
    assert len(episodes) == len(prompts) and all(e["exploration"] is None for e in episodes)
    assert all(e["returned_call"] is not None for e in episodes)


@ON_THE_STACK
async def test_an_exploring_tenant_records_the_behaviour_probability_of_its_first_call(stack, prompts) -> None:  # type: ignore[no-untyped-def]
    draw = ExploringPolicy(stack.router_core.policy, 1.0).weights(greedy_state(stack, prompts[0]))
    weight = dict(zip((o.id for o in greedy_state(stack, prompts[0]).pool), draw))
    assert sum(draw) == pytest.approx(1.0) and len(draw) == len(stack.router_core.catalog)
    firsts, greedy = [], []
    for prompt in prompts:
        result = await stack.router_core.route(RouteRequest([("user", prompt)], tenant="explorer"))
        firsts.append(result.calls[0].model)
        greedy.append(await first_choice(stack, prompt))
    episodes = list(export.episodes(stack.ledger.engine, tenant="explorer"))
    assert [e["calls"][0]["model"] for e in episodes] == firsts
    # ε = 1: every first call is drawn, with the draw's weight of the model drawn (1 / (1 + rows the
    # memory holds on it), normalised over the pool).
    assert all(e["exploration"] == {"epsilon": 1.0, "first_call_probability": pytest.approx(weight[e["calls"][0]["model"]]),
                                    "first_call_explored": True} for e in episodes)
    # Eight uniform draws over 11 models all landing on the policy's own choices: (1/11)^8.
    assert firsts != greedy


@ON_THE_STACK
async def test_a_per_request_policy_override_is_not_explored(stack, prompts) -> None:  # type: ignore[no-untyped-def]
    result = await stack.router_core.route(RouteRequest([("user", prompts[0])], tenant="explorer", policy="cheapest",
                                                        request_id="override-1"))
    (episode,) = [e for e in export.episodes(stack.ledger.engine, tenant="explorer")
                  if e["request_id"] == "override-1"]
    assert episode["exploration"] is None and episode["returned_call"]["index"] == result.selected_call
