"""Failed-login throttling (django-axes, ildreview/auth.py): failures count per username+address
combination on the login page and the token endpoint together; after AXES_FAILURE_LIMIT the
combination is locked, even for the right password, and nothing else is."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from ildreview.auth import client_ip_address
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

PASSWORD = "pw-for-tests-123"  # the factories' password
LIMIT = 5

A = {"REMOTE_ADDR": "10.0.0.1"}
B = {"REMOTE_ADDR": "10.0.0.2"}


def via_proxy(forwarded: str) -> dict:
    """A request relayed by the proxy at 10.9.9.9, with the X-Forwarded-For it sent."""
    return {"REMOTE_ADDR": "10.9.9.9", "HTTP_X_FORWARDED_FOR": forwarded}


@pytest.fixture(autouse=True)
def _limit(settings):
    settings.AXES_FAILURE_LIMIT = LIMIT
    settings.AXES_COOLOFF_TIME = 0.5


@pytest.fixture
def users():
    return [UserFactory(username=name, role="Clinician") for name in ("alice", "bob")]


def page_login(username: str, password: str, meta: dict, client: Client | None = None):
    client = client or Client()
    data = {"username": username, "password": password}
    return client, client.post(reverse("login"), data, **meta)


def api_login(username: str, password: str, meta: dict):
    data = {"username": username, "password": password}
    return Client().post(reverse("api-token"), data, content_type="application/json", **meta)


def outcome(username: str, right: bool, meta: dict, via: str) -> str:
    """ "ok", "wrong" or "locked", checked against everything the response says."""
    password = PASSWORD if right else "wrong-password"
    if via == "api":
        response = api_login(username, password, meta)
        if response.status_code == 200:
            assert response.json()["token"]
            return "ok"
        if response.status_code == 400:
            assert "token" not in response.json()
            return "wrong"
        assert response.status_code == 429, response.content
        assert "Too many failed login attempts" in response.json()["detail"]
        return "locked"
    client, response = page_login(username, password, meta)
    if response.status_code == 302:
        assert "_auth_user_id" in client.session
        return "ok"
    assert "_auth_user_id" not in client.session
    if response.status_code == 200:
        assert "Wrong username or password" in response.content.decode()
        return "wrong"
    assert response.status_code == 429
    assert "Account locked" in response.content.decode()
    return "locked"


W, R = False, True  # wrong or right password

# (who, right password?, request META, "page" or "api", expected outcome)
SCENARIOS = {
    "a success does not reset another account's failures (the issue's report)": [
        *[("alice", W, A, "page", "wrong")] * 4,
        ("bob", R, A, "page", "ok"),
        ("alice", W, A, "page", "locked"),
        ("alice", R, A, "page", "locked"),
    ],
    "a token obtained by another account does not reset failures either": [
        *[("alice", W, A, "page", "wrong")] * 4,
        ("bob", R, A, "api", "ok"),
        ("alice", W, A, "page", "locked"),
    ],
    "one account's failures never lock another account on the same address": [
        *[("alice", W, A, "page", "wrong")] * 4,
        ("alice", W, A, "page", "locked"),
        ("bob", R, A, "page", "ok"),
        ("bob", W, A, "page", "wrong"),
        ("bob", R, A, "api", "ok"),
    ],
    "a lock holds for the username and address together": [
        *[("alice", W, A, "page", "wrong")] * 4,
        ("alice", W, A, "page", "locked"),
        ("alice", R, B, "page", "ok"),
        ("alice", R, A, "page", "locked"),
    ],
    "an account's own success resets its own failures": [
        *[("alice", W, A, "page", "wrong")] * 4,
        ("alice", R, A, "page", "ok"),
        *[("alice", W, A, "page", "wrong")] * 4,
        ("alice", R, A, "page", "ok"),
    ],
    "failures of unknown usernames count and lock like real ones": [
        *[("mallory", W, A, "page", "wrong")] * 4,
        ("mallory", W, A, "page", "locked"),
        ("alice", R, A, "page", "ok"),
    ],
    "the token endpoint counts failures and locks with 429": [
        *[("alice", W, A, "api", "wrong")] * 4,
        ("alice", W, A, "api", "locked"),
        ("alice", R, A, "api", "locked"),
        ("alice", R, A, "page", "locked"),
        ("alice", R, B, "api", "ok"),
    ],
    "page and token endpoint failures add up": [
        *[("alice", W, A, "page", "wrong")] * 2,
        *[("alice", W, A, "api", "wrong")] * 2,
        ("alice", W, A, "page", "locked"),
        ("alice", R, A, "api", "locked"),
    ],
    "a forged X-Forwarded-For is ignored without trusted proxies": [
        *[
            ("alice", W, {**A, "HTTP_X_FORWARDED_FOR": f"192.0.2.{i}"}, "page", "wrong")
            for i in range(4)
        ],
        ("alice", W, {**A, "HTTP_X_FORWARDED_FOR": "192.0.2.99"}, "page", "locked"),
        ("alice", R, {**A, "HTTP_X_FORWARDED_FOR": "192.0.2.100"}, "api", "locked"),
    ],
}

PROXY_SCENARIOS = {
    "behind a trusted proxy, clients are told apart by the address it forwards": [
        *[("alice", W, via_proxy("198.51.100.1"), "page", "wrong")] * 4,
        ("alice", W, via_proxy("198.51.100.1"), "page", "locked"),
        ("alice", R, via_proxy("198.51.100.2"), "page", "ok"),
        ("alice", R, via_proxy("198.51.100.2"), "api", "ok"),
    ],
    "behind a trusted proxy, entries the client wrote itself are ignored": [
        *[("alice", W, via_proxy(f"192.0.2.{i}, 198.51.100.1"), "page", "wrong") for i in range(4)],
        ("alice", W, via_proxy("192.0.2.50, 198.51.100.1"), "api", "locked"),
        ("alice", R, via_proxy("198.51.100.1"), "page", "locked"),
    ],
}


@pytest.mark.parametrize("steps", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_login_lockout_table(users, steps):
    for number, (who, right, meta, via, expected) in enumerate(steps, start=1):
        assert outcome(who, right, meta, via) == expected, f"step {number}"


@pytest.mark.parametrize("steps", PROXY_SCENARIOS.values(), ids=PROXY_SCENARIOS.keys())
def test_login_lockout_table_behind_one_trusted_proxy(settings, users, steps):
    settings.ILDREVIEW_TRUSTED_PROXY_COUNT = 1
    for number, (who, right, meta, via, expected) in enumerate(steps, start=1):
        assert outcome(who, right, meta, via) == expected, f"step {number}"


def test_right_password_logs_in_through_the_login_page(users):
    client, response = page_login("alice", PASSWORD, A)
    assert response.status_code == 302
    assert response["Location"] == reverse("cases:worklist")
    assert "_auth_user_id" in client.session


def test_each_failure_shows_one_message_with_the_attempts_left(users):
    for left in range(LIMIT - 1, 0, -1):
        _, response = page_login("alice", "wrong", A)
        html = response.content.decode()
        assert response.status_code == 200
        word = "attempt" if left == 1 else "attempts"
        assert html.count('class="error"') == 1
        assert (
            f"Wrong username or password. {left} {word} left before this account is locked "
            "for 30 minutes." in html
        )
        # Django's own wording would be a second message.
        assert "Please enter a correct" not in html


def test_lockout_page_says_how_long(users):
    for _ in range(LIMIT):
        page_login("alice", "wrong", A)
    _, response = page_login("alice", PASSWORD, A)
    assert response.status_code == 429
    assert "registration/lockout.html" in [t.name for t in response.templates]
    assert "Try again in 30 minutes" in response.content.decode()


def test_locked_token_request_gets_json_429_and_no_token(users):
    for _ in range(LIMIT):
        api_login("alice", "wrong", A)
    response = api_login("alice", PASSWORD, A)
    assert response.status_code == 429
    assert response["Content-Type"] == "application/json"
    assert set(response.json()) == {"detail"}


def test_pages_still_redirect_to_login_after_a_lockout(users):
    for _ in range(LIMIT):
        page_login("alice", "wrong", A)
    client, _ = page_login("alice", PASSWORD, A)
    assert client.get(reverse("cases:worklist")).status_code == 302


@pytest.mark.parametrize(
    ("proxies", "meta", "expected"),
    [
        (0, {"REMOTE_ADDR": "10.0.0.1", "HTTP_X_FORWARDED_FOR": "192.0.2.1"}, "10.0.0.1"),
        (1, {"REMOTE_ADDR": "10.9.9.9", "HTTP_X_FORWARDED_FOR": "192.0.2.1"}, "192.0.2.1"),
        (1, {"REMOTE_ADDR": "10.9.9.9", "HTTP_X_FORWARDED_FOR": "1.1.1.1, 192.0.2.1"}, "192.0.2.1"),
        (
            2,
            {"REMOTE_ADDR": "10.9.9.9", "HTTP_X_FORWARDED_FOR": "1.1.1.1, 192.0.2.1, 10.8.8.8"},
            "192.0.2.1",
        ),
        (2, {"REMOTE_ADDR": "10.9.9.9", "HTTP_X_FORWARDED_FOR": "192.0.2.1"}, "10.9.9.9"),
        (1, {"REMOTE_ADDR": "10.9.9.9"}, "10.9.9.9"),
        (1, {"REMOTE_ADDR": "10.9.9.9", "HTTP_X_FORWARDED_FOR": "not-an-ip"}, "10.9.9.9"),
        (1, {"REMOTE_ADDR": "10.9.9.9", "HTTP_X_FORWARDED_FOR": "2001:db8::1"}, "2001:db8::1"),
    ],
)
def test_client_address_trusts_only_the_configured_proxies(settings, rf, proxies, meta, expected):
    settings.ILDREVIEW_TRUSTED_PROXY_COUNT = proxies
    assert client_ip_address(rf.get("/", **meta)) == expected
