"""Failed-login throttling (django-axes): after AXES_FAILURE_LIMIT failures the account is
locked, even for the right password."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.urls import reverse

from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

PASSWORD = "pw-for-tests-123"  # the factories' password


@pytest.fixture
def alice():
    return UserFactory(username="alice", role="Clinician")


def attempt(client, password: str, username: str = "alice"):
    return client.post(reverse("login"), {"username": username, "password": password})


def logged_in(client) -> bool:
    return "_auth_user_id" in client.session


def test_right_password_logs_in_through_the_login_page(client, alice):
    response = attempt(client, PASSWORD)
    assert response.status_code == 302
    assert response["Location"] == reverse("cases:worklist")
    assert logged_in(client)


def test_failures_below_the_limit_do_not_lock(client, alice):
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        response = attempt(client, "wrong")
        assert response.status_code == 200
        assert "didn" in response.content.decode()
    assert attempt(client, PASSWORD).status_code == 302
    assert logged_in(client)


def test_account_is_locked_after_the_failure_limit_even_with_the_right_password(client, alice):
    for _ in range(settings.AXES_FAILURE_LIMIT):
        attempt(client, "wrong")

    response = attempt(client, PASSWORD)

    assert response.status_code == settings.AXES_HTTP_RESPONSE_CODE == 429
    assert "Account locked" in response.content.decode()
    assert "registration/lockout.html" in [t.name for t in response.templates]
    assert not logged_in(client)
    # ... and pages still redirect to the login page.
    assert client.get(reverse("cases:worklist")).status_code == 302


def test_lockout_by_username_applies_from_another_address(client, alice):
    for _ in range(settings.AXES_FAILURE_LIMIT):
        attempt(client, "wrong")
    response = client.post(
        reverse("login"),
        {"username": "alice", "password": PASSWORD},
        REMOTE_ADDR="10.1.2.3",
    )
    assert response.status_code == 429
    assert not logged_in(client)
