"""A tenant named in the request and beside it (header, metadata): one tenant, or a refusal
naming the field, never one of them silently dropped."""

from __future__ import annotations

import pytest

from xrouter.common.errors import InvalidArgument
from xrouter.router.auth import named_tenant, tenant_from_metadata
from xrouter.router.feedback import parse_body
from xrouter.router.openai_request import parse_chat_request

CHAT = {"model": "xrouter", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(("in_request", "beside", "tenant"),
                         [("", "", ""), ("acme", "", "acme"), ("", "acme", "acme"), ("acme", "acme", "acme")])
def test_one_tenant_named_once_or_twice_alike(in_request: str, beside: str, tenant: str) -> None:
    assert named_tenant(in_request, beside, "tenant", "X-Tenant") == tenant


def test_two_tenants_are_refused_on_every_face() -> None:
    with pytest.raises(InvalidArgument) as error:
        parse_chat_request({**CHAT, "xrouter": {"tenant": "acme"}}, "globex")
    assert error.value.field == "xrouter.tenant"
    assert parse_chat_request({**CHAT, "xrouter": {"tenant": "acme"}}, "acme").route.tenant == "acme"
    with pytest.raises(InvalidArgument) as error:
        parse_body({"request_id": "r1", "score": 1.0, "tenant": "acme"}, "globex")
    assert error.value.field == "tenant"
    assert parse_body({"request_id": "r1", "score": 1.0}, "globex").tenant == "globex"


def test_grpc_metadata_names_a_tenant_as_the_header_does() -> None:
    assert tenant_from_metadata([("authorization", "Bearer k"), ("x-tenant", b"acme")]) == "acme"
    assert tenant_from_metadata([("authorization", "Bearer k")]) == ""
