"""The HTTP role table and the token list, without a server: what each role may do, a route
nobody listed failing closed, and a malformed token list refused without echoing a token."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from streams.controlplane.auth import ADMIN, OPERATOR, VIEWER, Identity, parse_tokens, route_role
from streams.controlplane.web import route_access
from streams.security.exceptions import CredentialsError
from streams.settings import load_settings

STOP = "/campaigns/{campaign_id}/stop"


@pytest.mark.parametrize(("role", "may_read", "may_stop", "may_use_unlisted_write"), [
    (VIEWER, True, False, False),
    (OPERATOR, True, True, False),
    (ADMIN, True, True, True),
])
def test_each_role_includes_the_ones_before_it(role: str, may_read: bool, may_stop: bool,
                                                may_use_unlisted_write: bool) -> None:
    who = Identity("someone", role, "127.0.0.1")
    routes = route_access()
    assert who.may(route_role(routes, "GET", "/campaigns")) is may_read
    assert who.may(route_role(routes, "POST", STOP)) is may_stop
    assert who.may(route_role(routes, "POST", "/stop-all")) is (role == ADMIN)  # the kill switch
    # A route added without a line in the table needs admin to write.
    assert who.may(route_role(routes, "POST", "/unlisted")) is may_use_unlisted_write
    assert who.may(route_role(routes, "GET", "/metrics")) and who.may(route_role(routes, "GET", "/health"))


def test_tokens_are_kept_as_digests_with_their_user_and_role() -> None:
    settings = load_settings(http_tokens=SecretStr("ann:operator:" + "a" * 20 + ", bob:viewer:" + "b" * 20))
    tokens = parse_tokens(settings)
    assert sorted(tokens.values()) == [("ann", "operator"), ("bob", "viewer")]
    assert all(len(digest) == 32 for digest in tokens)  # SHA-256, not the token
    assert parse_tokens(load_settings(http_tokens=None)) == {}


@pytest.mark.parametrize("entry", ["ann:root:" + "s" * 20, "ann:viewer:short-secret", ":viewer:" + "s" * 20])
def test_a_bad_token_entry_names_its_position_not_its_secret(entry: str) -> None:
    settings = load_settings(http_tokens=SecretStr("ok:viewer:" + "o" * 20 + "," + entry))
    with pytest.raises(CredentialsError) as raised:
        parse_tokens(settings)
    assert "entry 2" in str(raised.value)
    assert entry.rsplit(":", 1)[1] not in str(raised.value)
