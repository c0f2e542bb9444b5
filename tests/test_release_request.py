"""A request's objects are freed by reference counting when it ends, not by the cycle collector.

Under load, a graph left to the collector reached its oldest generation, whose collections
paused a worker with all its requests (broker/middleware.py, ReleaseRequestMiddleware). Each
request goes through Django's WSGI handler, as under gunicorn, with the collector off; then
one collection must find none of the request's objects. (Admin pages still leave some, to the
collector: Django's forms, templates and class-based views; they are rare.)
"""

import gc
import json
import secrets

import pytest
from django.contrib.messages.storage.base import BaseStorage
from django.core.handlers.wsgi import WSGIHandler
from django.http import HttpRequest, HttpResponseBase, StreamingHttpResponse
from django.test import RequestFactory
from rest_framework.fields import Field
from rest_framework.request import Request
from rest_framework.serializers import BaseSerializer
from rest_framework.views import APIView

from broker.middleware import ReleaseRequestMiddleware
from sessions_api.services import SessionRequest

# in_test_transaction: the handler must not close the test's database connection.
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("in_test_transaction")]

URL = "/api/chatkit/session/"
# What a request builds and nothing else holds once it has ended.
PER_REQUEST = (
    HttpRequest,
    HttpResponseBase,
    Request,
    APIView,
    BaseSerializer,
    Field,
    BaseStorage,
    SessionRequest,
)


def serve(handler: WSGIHandler, request: HttpRequest) -> str:
    """Serve a request built by RequestFactory, as a WSGI server does; its status."""
    statuses = []
    response = handler(request.environ, lambda status, _: statuses.append(status))
    try:
        b"".join(response)
    finally:
        response.close()
    return statuses[0]


def left_to_the_collector(make) -> tuple[str, list[str]]:
    """Serve make()'s request with the collector off; its status, and the request's objects a
    collection then finds."""
    handler = WSGIHandler()  # as a server's, it outlives the request
    serve(handler, make())  # the first request of a process fills caches; measure the second
    request = make()
    gc.collect()
    gc.disable()
    try:
        status = serve(handler, request)
        del request
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        # type(), not isinstance(): asking a lazy object its class would evaluate it.
        found = [
            type(item).__qualname__ for item in gc.garbage if issubclass(type(item), PER_REQUEST)
        ]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    return status, found


def session_post(body: str, **extra):
    return lambda: RequestFactory().post(URL, body, content_type="application/json", **extra)


def test_a_minted_session_leaves_nothing_to_the_collector(upstream):
    status, found = left_to_the_collector(session_post("{}"))

    assert status == "200 OK"
    assert found == []


@pytest.mark.parametrize(
    "body, expected",
    [
        ("{not json", "400 Bad Request"),
        (json.dumps({"workflow_id": 7}), "400 Bad Request"),
    ],
    ids=["malformed JSON", "invalid field"],
)
def test_a_refused_request_leaves_nothing_to_the_collector(upstream, body, expected):
    status, found = left_to_the_collector(session_post(body))

    assert status == expected
    assert found == []


def test_an_upstream_refusal_leaves_nothing_to_the_collector(upstream):
    upstream.state.push_faults([{"status": 401}] * 2)

    status, found = left_to_the_collector(session_post("{}"))

    assert status.startswith("502")
    assert found == []


def test_a_throttled_request_leaves_nothing_to_the_collector(upstream, settings):
    settings.CHATKIT_THROTTLE_ADDRESS = "1/min"  # callers without a cookie
    address = f"10.{secrets.randbelow(250)}.{secrets.randbelow(250)}.{secrets.randbelow(250)}"

    status, found = left_to_the_collector(session_post("{}", REMOTE_ADDR=address))

    assert status.startswith("429")
    assert found == []


def test_a_streaming_response_keeps_its_request_whole():
    # Its body is made after the middleware returns (the audit CSV export), and may use both.
    request = RequestFactory().get("/")
    request._messages, request.auser = object(), object()
    stream = StreamingHttpResponse(iter(["row"]))

    assert ReleaseRequestMiddleware(lambda _: stream)(request) is stream
    assert "_messages" in vars(request)
    assert "auser" in vars(request)
