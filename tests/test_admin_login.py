"""Admin logins are throttled (django-axes): a guessed password locks the username out."""

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db

LOGIN = "/admin/login/"


def log_in(client: Client, username: str, password: str):
    return client.post(LOGIN, {"username": username, "password": password, "next": "/admin/"})


def test_five_wrong_passwords_lock_the_username_out_from_that_address(admin_user, settings):
    settings.AXES_FAILURE_LIMIT = 5
    guesser = Client(REMOTE_ADDR="203.0.113.5")
    answers = [log_in(guesser, "admin", "guess").status_code for _ in range(5)]
    assert answers == [200] * 4 + [429]  # the form again, then the lockout

    locked = log_in(guesser, "admin", "password")  # even the right one, now
    assert locked.status_code == 429
    assert "_auth_user_id" not in guesser.session
    # The real admin, from another address, is not locked out by the guesser.
    elsewhere = Client(REMOTE_ADDR="198.51.100.7")
    assert log_in(elsewhere, "admin", "password").status_code == 302


def test_a_success_forgets_the_earlier_failures(admin_user, settings):
    settings.AXES_FAILURE_LIMIT = 3
    client = Client(REMOTE_ADDR="203.0.113.6")
    for _ in range(2):
        log_in(client, "admin", "typo")
    assert log_in(client, "admin", "password").status_code == 302
    client.logout()
    for _ in range(2):
        log_in(client, "admin", "typo")
    assert log_in(client, "admin", "password").status_code == 302


def test_behind_a_proxy_the_forwarded_address_is_the_one_locked_out(admin_user, settings):
    settings.AXES_FAILURE_LIMIT = 2
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}
    proxy = "10.0.0.2"
    for _ in range(2):
        log_in(Client(REMOTE_ADDR=proxy, HTTP_X_FORWARDED_FOR="203.0.113.9"), "admin", "guess")
    # (Both attempts came through the proxy: its own address is not what is locked out.)
    locked = Client(REMOTE_ADDR=proxy, HTTP_X_FORWARDED_FOR="203.0.113.9")
    assert log_in(locked, "admin", "password").status_code == 429
    other = Client(REMOTE_ADDR=proxy, HTTP_X_FORWARDED_FOR="198.51.100.9")
    assert log_in(other, "admin", "password").status_code == 302
