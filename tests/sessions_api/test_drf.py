"""The request body parser on its own, at its limit."""

import io

import pytest
from rest_framework.exceptions import ParseError

from sessions_api.drf import LimitedJSONParser
from sessions_api.errors import RequestTooLarge


def body_of(size: int) -> bytes:
    """A JSON object of exactly `size` bytes."""
    return b'{"p": "' + b"x" * (size - 9) + b'"}'


def test_a_body_exactly_at_the_limit_is_parsed(settings):
    settings.CHATKIT_MAX_BODY_BYTES = 64
    assert LimitedJSONParser().parse(io.BytesIO(body_of(64)), "application/json") == {"p": "x" * 55}


def test_one_byte_over_the_limit_is_refused_saying_the_limit(settings):
    settings.CHATKIT_MAX_BODY_BYTES = 64
    with pytest.raises(RequestTooLarge) as refused:
        LimitedJSONParser().parse(io.BytesIO(body_of(65)), "application/json")
    assert refused.value.message == "The request body is larger than 64 bytes."


def test_the_stream_is_read_no_further_than_the_limit(settings):
    settings.CHATKIT_MAX_BODY_BYTES = 64
    stream = io.BytesIO(body_of(64) + b" " * 1000)
    with pytest.raises(RequestTooLarge):
        LimitedJSONParser().parse(stream, "application/json")
    assert stream.tell() == 65


def test_no_stream_is_an_empty_body(settings):
    with pytest.raises(ParseError, match="JSON parse error"):
        LimitedJSONParser().parse(None, "application/json")


def test_the_request_encoding_is_honoured(settings):
    """DRF passes the request's charset in the parser context."""
    body = io.BytesIO('{"p": "é"}'.encode("latin-1"))
    parsed = LimitedJSONParser().parse(body, "application/json", {"encoding": "latin-1"})
    assert parsed == {"p": "é"}
