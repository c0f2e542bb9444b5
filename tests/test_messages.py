"""Django's messages, with the storage built only for a request that uses it
(broker.middleware.LazyMessageMiddleware)."""

import pytest
from django.contrib import messages
from django.contrib.messages.storage.fallback import FallbackStorage
from django.contrib.sessions.middleware import SessionMiddleware
from django.http import HttpResponse
from django.test import RequestFactory

from broker.middleware import LazyMessageMiddleware


def through_the_middleware(view, request):
    # As in settings.MIDDLEWARE: the session's middleware around the messages'.
    return SessionMiddleware(LazyMessageMiddleware(view))(request)


class CountedStorage(FallbackStorage):
    """Django's default storage, counting the requests it is built for."""

    built: list[str] = []

    def __init__(self, request, *args, **kwargs) -> None:
        self.built.append(request.path)
        super().__init__(request, *args, **kwargs)


@pytest.fixture
def counted(settings):
    settings.MESSAGE_STORAGE = f"{__name__}.CountedStorage"
    CountedStorage.built.clear()
    return CountedStorage.built


def test_a_request_that_uses_no_messages_builds_no_storage(client, counted):
    response = client.get("/api/csrf/")

    assert response.status_code == 200
    assert counted == []
    assert "messages" not in response.cookies


@pytest.mark.django_db
def test_a_message_added_is_saved_then_shown_once(counted):
    def add(request):
        messages.success(request, "Acknowledged 1 alert(s).")
        return HttpResponse()

    def show(request):
        shown.append([str(message) for message in messages.get_messages(request)])
        return HttpResponse()

    shown: list[list[str]] = []
    factory = RequestFactory()
    saved = through_the_middleware(add, factory.get("/admin/"))
    cookie = saved.cookies["messages"].value
    assert cookie

    factory.cookies["messages"] = cookie
    read = through_the_middleware(show, factory.get("/admin/"))
    factory.cookies["messages"] = read.cookies["messages"].value  # emptied once read
    through_the_middleware(show, factory.get("/admin/"))

    assert shown == [["Acknowledged 1 alert(s)."], []]
    assert counted == ["/admin/"] * 3
