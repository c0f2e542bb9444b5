"""The ChatKit emulator over real sockets, seen through requests as the broker's client sees it."""

import gc
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from emulator.faults import parse_script
from emulator.server import build_app, serve_in_thread
from emulator.state import RECORDED_BODY_BYTES, EmulatorState
from emulator.validation import (
    BETA_MESSAGE,
    JSON_MESSAGE,
    MISSING_KEY_MESSAGE,
    SERVER_ERROR_MESSAGE,
    mask_key,
)

KEY = "sk-test-0123456789abcdefwxyz"
HEADERS = {"Authorization": f"Bearer {KEY}", "OpenAI-Beta": "chatkit_beta=v1"}
BODY = {"workflow": {"id": "wf_demo"}, "user": "user-123"}
TOP_LEVEL_FIELDS = {
    "id",
    "object",
    "client_secret",
    "expires_at",
    "status",
    "user",
    "workflow",
    "rate_limits",
    "max_requests_per_1_minute",
    "chatkit_configuration",
}
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server():
    with serve_in_thread() as running:
        yield running


@pytest.fixture
def emu(server):
    server.state.reset()
    return server


def create(emu, body=BODY, headers=HEADERS, timeout=5, **kwargs):
    if isinstance(body, str | bytes):
        kwargs["data"] = body
    elif body is not None:
        kwargs["json"] = body
    url = f"{emu.base_url}/chatkit/sessions"
    return requests.post(url, headers=headers, timeout=timeout, **kwargs)


def cancel(emu, session_id, headers=HEADERS):
    url = f"{emu.base_url}/chatkit/sessions/{session_id}/cancel"
    return requests.post(url, headers=headers, timeout=5)


def assert_error(response, status, message, *, param=None, code=None, type="invalid_request_error"):
    assert response.status_code == status, response.text
    assert response.json() == {
        "error": {"message": message, "type": type, "param": param, "code": code}
    }
    assert re.fullmatch(r"req_[0-9a-f]{32}", response.headers["x-request-id"])


# ----------------------------------------------------------------------------- success


def test_create_returns_every_field_of_the_contract(emu):
    before = int(time.time())
    response = create(emu)
    assert response.status_code == 200
    session = response.json()
    assert set(session) == TOP_LEVEL_FIELDS
    assert re.fullmatch(r"cksess_[0-9a-f]{32}", session["id"])
    assert re.fullmatch(r"ek_[0-9a-f]{48}", session["client_secret"])
    assert session["object"] == "chatkit.session"
    assert session["status"] == "active"
    assert session["user"] == "user-123"
    assert before + 600 <= session["expires_at"] <= int(time.time()) + 600
    assert session["workflow"] == {
        "id": "wf_demo",
        "version": None,
        "state_variables": None,
        "tracing": {"enabled": True},
    }
    assert session["rate_limits"] == {"max_requests_per_1_minute": 10}
    assert session["max_requests_per_1_minute"] == 10
    assert session["chatkit_configuration"] == {
        "automatic_thread_titling": {"enabled": True},
        "file_upload": {"enabled": False, "max_file_size": None, "max_files": None},
        "history": {"enabled": True, "recent_threads": None},
    }
    assert "expires_after" not in session
    assert int(response.headers["openai-processing-ms"]) >= 0


def test_create_honours_what_was_sent(emu):
    body = {
        "workflow": {
            "id": "wf_demo",
            "version": "3",
            "state_variables": {"plan": "pro", "beta": True, "seats": 4},
            "tracing": {"enabled": False},
        },
        "user": "user-123",
        "expires_after": {"anchor": "created_at", "seconds": 30},
        "rate_limits": {"max_requests_per_1_minute": 42},
        "chatkit_configuration": {
            "file_upload": {"enabled": True, "max_files": 3},
            "history": {"recent_threads": 5},
        },
    }
    before = int(time.time())
    session = create(emu, body).json()
    assert before + 30 <= session["expires_at"] <= int(time.time()) + 30
    assert session["workflow"] == {
        "id": "wf_demo",
        "version": "3",
        "state_variables": {"plan": "pro", "beta": True, "seats": 4},
        "tracing": {"enabled": False},
    }
    assert session["rate_limits"] == {"max_requests_per_1_minute": 42}
    assert session["max_requests_per_1_minute"] == 42
    assert session["chatkit_configuration"] == {
        "automatic_thread_titling": {"enabled": True},
        "file_upload": {"enabled": True, "max_file_size": None, "max_files": 3},
        "history": {"enabled": True, "recent_threads": 5},
    }


def test_each_session_gets_fresh_identifiers(emu):
    first, second = create(emu).json(), create(emu).json()
    assert first["id"] != second["id"]
    assert first["client_secret"] != second["client_secret"]


def test_the_received_request_is_kept_for_inspection(emu):
    create(emu, headers={**HEADERS, "X-Trace": "abc"})
    (received,) = emu.state.received()
    assert received["method"] == "POST"
    assert received["path"] == "/v1/chatkit/sessions"
    assert received["headers"]["authorization"] == f"Bearer {KEY}"
    assert received["headers"]["X-Trace"] == "abc"
    assert received["json"] == BODY


def test_an_unparsable_body_is_kept_truncated(emu):
    create(emu, body=b"{" * 10_000)
    (received,) = emu.state.received()
    assert received["json"] is None
    assert received["body"] == b"{" * RECORDED_BODY_BYTES


# ----------------------------------------------------------------------------- auth and headers

MISSING_KEY = MISSING_KEY_MESSAGE


@pytest.mark.parametrize(
    "authorization", [None, "", "Bearer", "Bearer   ", f"Basic {KEY}", KEY], ids=repr
)
def test_missing_key_is_401(emu, authorization):
    headers = {"OpenAI-Beta": "chatkit_beta=v1"}
    if authorization is not None:
        headers["Authorization"] = authorization
    assert_error(create(emu, headers=headers), 401, MISSING_KEY)


def test_missing_key_message_is_openais():
    assert MISSING_KEY.startswith("You didn't provide an API key. You need to provide your API key")
    assert MISSING_KEY.endswith("https://platform.openai.com/account/api-keys.")


@pytest.mark.parametrize("key", ["sk-short", "pk-0123456789abcdefghijwxyz"])
def test_a_key_not_accepted_is_401_and_masked(emu, key):
    response = create(emu, headers={**HEADERS, "Authorization": f"Bearer {key}"})
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == "invalid_api_key"
    assert error["type"] == "invalid_request_error"
    assert error["param"] is None
    assert key not in error["message"]
    assert re.fullmatch(
        r"Incorrect API key provided: \S+\*+\S*\. You can find your API key at "
        r"https://platform\.openai\.com/account/api-keys\.",
        error["message"],
    )


def test_masking_follows_openai():
    key = "sk-abc" + "0" * 30 + "wxyz"
    assert mask_key(key) == "sk-abc00" + "*" * (len(key) - 12) + "wxyz"
    assert mask_key("sk-abcdefghijklmnop") != "sk-abcdefghijklmnop"
    assert mask_key("abc") == "***"


def test_configured_keys_are_the_only_ones_accepted():
    with serve_in_thread(api_keys=["sk-mine-aaaaaaaaaaaaaaaaaaaa", "local"]) as emu:
        assert create(emu, headers={**HEADERS, "Authorization": "Bearer local"}).ok
        mine = {**HEADERS, "Authorization": "Bearer sk-mine-aaaaaaaaaaaaaaaaaaaa"}
        assert create(emu, headers=mine).status_code == 200
        response = create(emu)  # a well-formed sk- key, but not one of them
        assert response.status_code == 401
        assert response.json()["error"]["message"].startswith(
            "Incorrect API key provided: sk-test-****"
        )


@pytest.mark.parametrize("beta", [None, "", "assistants=v2", "chatkit_beta=v2"])
def test_beta_header_is_required(emu, beta):
    headers = {"Authorization": f"Bearer {KEY}"}
    if beta is not None:
        headers["OpenAI-Beta"] = beta
    assert_error(create(emu, headers=headers), 400, BETA_MESSAGE)


def test_beta_header_may_list_several_betas(emu):
    headers = {**HEADERS, "OpenAI-Beta": "assistants=v2, chatkit_beta=v1"}
    assert create(emu, headers=headers).status_code == 200


def test_checks_come_in_upstream_order(emu):
    no_beta = {"Authorization": f"Bearer {KEY}"}
    assert create(emu, body="{", headers={}).status_code == 401  # key before everything
    assert_error(create(emu, body="{", headers=no_beta), 400, BETA_MESSAGE)
    assert_error(create(emu, body="nope"), 400, JSON_MESSAGE)
    body = {"workflow": {"id": "nope"}}  # unknown workflow, and no user
    assert_error(
        create(emu, body),
        400,
        "Missing required parameter: 'user'.",
        param="user",
        code="missing_required_parameter",
    )


# ----------------------------------------------------------------------------- body validation


@pytest.mark.parametrize("raw", ["", "{", "not json", "[]", '"workflow"', "null", "\xff"])
def test_a_body_that_is_not_a_json_object_is_400(emu, raw):
    response = create(emu, body=raw.encode("latin-1"))
    assert_error(response, 400, JSON_MESSAGE)
    assert response.json()["error"]["message"].startswith(
        "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
        "using your HTTP library correctly."
    )


def missing(param):
    return (f"Missing required parameter: '{param}'.", param, "missing_required_parameter")


def invalid_type(param, expected, got):
    message = f"Invalid type for '{param}': expected {expected}, but got {got} instead."
    return (message, param, "invalid_type")


EXPIRES = "expires_after.seconds"
PER_MINUTE = "rate_limits.max_requests_per_1_minute"
WF = {"id": "wf_demo"}

VALIDATION_CASES = {
    "workflow missing": ({"user": "u"}, missing("workflow")),
    "workflow a string": (
        {"workflow": "wf_demo", "user": "u"},
        invalid_type("workflow", "an object", "a string"),
    ),
    "workflow a list": (
        {"workflow": [], "user": "u"},
        invalid_type("workflow", "an object", "an array"),
    ),
    "workflow null": (
        {"workflow": None, "user": "u"},
        invalid_type("workflow", "an object", "null"),
    ),
    "workflow.id missing": ({"workflow": {}, "user": "u"}, missing("workflow.id")),
    "workflow.id a number": (
        {"workflow": {"id": 7}, "user": "u"},
        invalid_type("workflow.id", "a string", "an integer"),
    ),
    "user missing": ({"workflow": WF}, missing("user")),
    "user a number": ({"workflow": WF, "user": 42}, invalid_type("user", "a string", "an integer")),
    "user null": ({"workflow": WF, "user": None}, invalid_type("user", "a string", "null")),
    "user empty": (
        {"workflow": WF, "user": ""},
        (
            "Invalid 'user': empty string. Expected a string with minimum length 1, but got an "
            "empty string instead.",
            "user",
            "empty_string",
        ),
    ),
    "expires_after a number": (
        {**BODY, "expires_after": 60},
        invalid_type("expires_after", "an object", "an integer"),
    ),
    "expires_after anchor missing": (
        {**BODY, "expires_after": {"seconds": 60}},
        missing("expires_after.anchor"),
    ),
    "expires_after anchor wrong": (
        {**BODY, "expires_after": {"anchor": "now", "seconds": 60}},
        (
            "Invalid value: 'now'. Supported values are: 'created_at'.",
            "expires_after.anchor",
            "invalid_value",
        ),
    ),
    "expires_after seconds missing": (
        {**BODY, "expires_after": {"anchor": "created_at"}},
        missing(EXPIRES),
    ),
    "expires_after seconds a string": (
        {**BODY, "expires_after": {"anchor": "created_at", "seconds": "60"}},
        invalid_type(EXPIRES, "an integer", "a string"),
    ),
    "expires_after seconds 0": (
        {**BODY, "expires_after": {"anchor": "created_at", "seconds": 0}},
        (
            f"Invalid '{EXPIRES}': integer below minimum value. Expected a value >= 1, but got 0 "
            "instead.",
            EXPIRES,
            "integer_below_min_value",
        ),
    ),
    "expires_after seconds 601": (
        {**BODY, "expires_after": {"anchor": "created_at", "seconds": 601}},
        (
            f"Invalid '{EXPIRES}': integer above maximum value. Expected a value <= 600, but got "
            "601 instead.",
            EXPIRES,
            "integer_above_max_value",
        ),
    ),
    "rate limit 0": (
        {**BODY, "rate_limits": {"max_requests_per_1_minute": 0}},
        (
            f"Invalid '{PER_MINUTE}': integer below minimum value. Expected a value >= 1, but got "
            "0 instead.",
            PER_MINUTE,
            "integer_below_min_value",
        ),
    ),
    "rate limit a decimal": (
        {**BODY, "rate_limits": {"max_requests_per_1_minute": 1.5}},
        invalid_type(PER_MINUTE, "an integer", "a decimal"),
    ),
    "rate limit a boolean": (
        {**BODY, "rate_limits": {"max_requests_per_1_minute": True}},
        invalid_type(PER_MINUTE, "an integer", "a boolean"),
    ),
    "65 state variables": (
        {
            "workflow": {"id": "wf_demo", "state_variables": {f"k{i}": i for i in range(65)}},
            "user": "u",
        },
        (
            "Invalid 'workflow.state_variables': too many properties. Expected an object with at "
            "most 64 properties, but got an object with 65 properties instead.",
            "workflow.state_variables",
            "object_above_max_properties",
        ),
    ),
    "state variable not primitive": (
        {"workflow": {"id": "wf_demo", "state_variables": {"a": [1]}}, "user": "u"},
        invalid_type("workflow.state_variables.a", "a string, a boolean or a number", "an array"),
    ),
    "unknown parameter": (
        {**BODY, "expires_in": 60},
        ("Unknown parameter: 'expires_in'.", "expires_in", "unknown_parameter"),
    ),
    "unknown nested parameter": (
        {"workflow": {"id": "wf_demo", "name": "x"}, "user": "u"},
        ("Unknown parameter: 'workflow.name'.", "workflow.name", "unknown_parameter"),
    ),
    "file size over 512 MB": (
        {**BODY, "chatkit_configuration": {"file_upload": {"max_file_size": 513}}},
        (
            "Invalid 'chatkit_configuration.file_upload.max_file_size': integer above maximum "
            "value. Expected a value <= 512, but got 513 instead.",
            "chatkit_configuration.file_upload.max_file_size",
            "integer_above_max_value",
        ),
    ),
}


@pytest.mark.parametrize(
    ("body", "expected"), VALIDATION_CASES.values(), ids=VALIDATION_CASES.keys()
)
def test_invalid_bodies_get_openais_400(emu, body, expected):
    message, param, code = expected
    assert_error(create(emu, body), 400, message, param=param, code=code)
    assert emu.state.stats()["created"] == 0


def test_64_state_variables_are_fine(emu):
    body = {
        "workflow": {"id": "wf_demo", "state_variables": {f"k{i}": i for i in range(64)}},
        "user": "u",
    }
    assert create(emu, body).status_code == 200


def test_expires_after_600_is_fine(emu):
    body = {**BODY, "expires_after": {"anchor": "created_at", "seconds": 600}}
    assert create(emu, body).status_code == 200


@pytest.mark.parametrize("workflow_id", ["nope", "WF_demo", "workflow_1"])
def test_unknown_workflow_is_404(emu, workflow_id):
    response = create(emu, {"workflow": {"id": workflow_id}, "user": "u"})
    assert_error(response, 404, f"Workflow with id '{workflow_id}' not found.")


def test_configured_workflows_are_the_only_ones_known():
    with serve_in_thread(workflows=["wf_one", "custom"]) as emu:
        assert create(emu, {"workflow": {"id": "custom"}, "user": "u"}).status_code == 200
        assert create(emu, {"workflow": {"id": "wf_one"}, "user": "u"}).status_code == 200
        response = create(emu, {"workflow": {"id": "wf_two"}, "user": "u"})
        assert_error(response, 404, "Workflow with id 'wf_two' not found.")


# ----------------------------------------------------------------------------- cancel and URLs


def test_cancel_a_known_session(emu):
    session = create(emu).json()
    response = cancel(emu, session["id"])
    assert response.status_code == 200
    cancelled = response.json()
    assert set(cancelled) == TOP_LEVEL_FIELDS
    assert cancelled == {**session, "status": "cancelled"}
    assert re.fullmatch(r"req_[0-9a-f]{32}", response.headers["x-request-id"])
    stored = requests.get(f"{emu.control_url}/sessions/{session['id']}", timeout=5)
    assert stored.json()["status"] == "cancelled"


def test_cancel_an_unknown_session_is_404(emu):
    response = cancel(emu, "cksess_0123")
    assert_error(response, 404, "Chatkit Session with id 'cksess_0123' not found.")


def test_cancel_checks_key_then_beta_header(emu):
    session_id = create(emu).json()["id"]
    assert_error(cancel(emu, session_id, headers={}), 401, MISSING_KEY)
    no_beta = {"Authorization": f"Bearer {KEY}"}
    assert_error(cancel(emu, session_id, headers=no_beta), 400, BETA_MESSAGE)
    assert emu.state.get_session(session_id)["status"] == "active"


def test_unknown_url_and_method_are_404_like_openai(emu):
    response = requests.get(f"{emu.base_url}/chatkit/sessions", headers=HEADERS, timeout=5)
    assert_error(response, 404, "Invalid URL (GET /v1/chatkit/sessions)")
    response = requests.post(f"{emu.base_url}/chatkit/threads", headers=HEADERS, timeout=5)
    assert_error(response, 404, "Invalid URL (POST /v1/chatkit/threads)")


# ----------------------------------------------------------------------------- faults


def test_every_answer_carries_a_request_id(emu):
    emu.state.push_faults(["500", "429:1", "garbage", {"status": 502, "body": ""}])
    responses = [create(emu) for _ in range(4)]
    responses += [
        create(emu),
        create(emu, headers={}),
        create(emu, {"user": "u"}),
        create(emu, {"workflow": {"id": "x"}, "user": "u"}),
        cancel(emu, "cksess_x"),
    ]
    ids = [response.headers["x-request-id"] for response in responses]
    assert all(re.fullmatch(r"req_[0-9a-f]{32}", request_id) for request_id in ids)
    assert len(set(ids)) == len(ids)
    assert all(response.headers["openai-processing-ms"].isdigit() for response in responses)


def test_a_5xx_fault_answers_openais_server_error(emu):
    emu.state.push_faults([{"status": 500}])
    assert_error(create(emu), 500, SERVER_ERROR_MESSAGE, type="server_error")
    assert create(emu).status_code == 200  # one fault per request, then normal


def test_a_fault_can_set_retry_after(emu):
    emu.state.push_faults([{"status": 503, "retry_after": 2}])
    response = create(emu)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "2"
    assert response.json()["error"]["type"] == "server_error"


def test_a_429_fault_is_a_rate_limit_error(emu):
    emu.state.push_faults(["429:1"])
    response = create(emu)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"
    error = response.json()["error"]
    assert error["message"].startswith("Rate limit reached")
    assert error["type"] == "rate_limit_exceeded"
    assert error["code"] == "rate_limit_exceeded"


def test_a_fault_can_answer_an_html_or_empty_body(emu):
    emu.state.push_faults(
        [
            {"status": 502, "body": "<html><body>Bad gateway</body></html>"},
            {"status": 504, "body": "", "content_type": "text/plain"},
        ]
    )
    html = create(emu)
    assert html.status_code == 502
    assert html.headers["content-type"].startswith("text/html")
    assert html.text == "<html><body>Bad gateway</body></html>"
    empty = create(emu)
    assert empty.status_code == 504
    assert empty.content == b""


def test_a_latency_fault_delays_then_answers_normally(emu):
    emu.state.push_faults(["slow:300"])
    started = time.monotonic()
    response = create(emu)
    assert time.monotonic() - started >= 0.3
    assert response.status_code == 200
    assert int(response.headers["openai-processing-ms"]) >= 300


def test_base_latency_applies_to_every_request():
    with serve_in_thread(latency_ms=150) as emu:
        started = time.monotonic()
        session_id = create(emu).json()["id"]
        cancel(emu, session_id)
        create(emu, headers={})
        assert time.monotonic() - started >= 0.45


def test_a_hangup_drops_the_connection_without_an_answer(emu):
    emu.state.push_faults(["hangup"])
    with pytest.raises(requests.ConnectionError):
        create(emu)
    assert create(emu).status_code == 200
    assert emu.state.stats()["dropped"] == 1


def test_garbage_is_a_200_that_is_not_json(emu):
    emu.state.push_faults([{"garbage": True}])
    response = create(emu)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    with pytest.raises(ValueError):
        json.loads(response.content)


def test_a_hang_never_answers(emu):
    emu.state.push_faults(["hang"])
    started = time.monotonic()
    with pytest.raises(requests.ReadTimeout):
        create(emu, timeout=0.3)
    assert time.monotonic() - started < 2
    assert create(emu).status_code == 200  # the server itself is not stuck


def test_faults_are_consumed_in_order_by_creates_only(emu):
    session_id = create(emu).json()["id"]
    emu.state.push_faults(["500", "ok", {"status": 409}])
    assert cancel(emu, session_id).status_code == 200  # cancel leaves the queue alone
    assert [create(emu).status_code for _ in range(4)] == [500, 200, 409, 200]


def test_a_fault_comes_before_validation(emu):
    emu.state.push_faults(["500"])
    assert create(emu, headers={}).status_code == 500


def test_faults_can_be_queued_over_http(emu):
    url = f"{emu.control_url}/faults"
    response = requests.post(url, json={"faults": ["503:4", {"status": 500}]}, timeout=5)
    assert response.json() == {"queued": 2}
    first = create(emu)
    assert (first.status_code, first.headers["retry-after"]) == (503, "4")
    assert create(emu).status_code == 500
    assert create(emu).status_code == 200


@pytest.mark.parametrize(
    "payload", [{"faults": ["explode"]}, {"faults": [{"status": 9000}]}, {"nope": []}, []]
)
def test_bad_faults_over_http_are_400(emu, payload):
    response = requests.post(f"{emu.control_url}/faults", json=payload, timeout=5)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "faults"
    assert emu.state.stats()["faults_queued"] == 0


def test_a_script_plays_once_then_answers_normally():
    with serve_in_thread(script="500,429:1,ok,garbage") as emu:
        responses = [create(emu) for _ in range(5)]
        assert [response.status_code for response in responses] == [500, 429, 200, 200, 200]
        with pytest.raises(ValueError):
            responses[3].json()
        assert responses[4].json()["status"] == "active"


def test_fail_rate_one_fails_every_create():
    with serve_in_thread(fail_rate=1.0) as emu:
        statuses = {create(emu).status_code for _ in range(20)}
        assert statuses == {500}
        assert emu.state.stats()["faults"] == 20


def test_fail_rate_zero_never_fails():
    with serve_in_thread(fail_rate=0.0) as emu:
        assert {create(emu).status_code for _ in range(20)} == {200}


@pytest.mark.parametrize(
    "options", [{"fail_rate": 1.5}, {"fail_rate": -0.1}, {"latency_ms": -1}, {"script": "boom"}]
)
def test_bad_options_are_refused(options):
    with pytest.raises(ValueError):
        build_app(**options)


# ----------------------------------------------------------------------------- parse_script


def test_parse_script_shorthand():
    assert parse_script("500,500,ok,hangup,garbage,hang,429:1,slow:3000") == [
        {"status": 500},
        {"status": 500},
        {"ok": True},
        {"hangup": True},
        {"garbage": True},
        {"hang": True},
        {"status": 429, "retry_after": 1},
        {"latency_ms": 3000},
    ]
    assert parse_script(" 503:2 , OK ") == [{"status": 503, "retry_after": 2}, {"ok": True}]
    assert parse_script("") == []


def test_parse_script_json_file_and_inline_json(tmp_path):
    faults = [{"status": 502, "body": "<html>oops</html>"}, "hangup", {"latency_ms": 10}]
    path = tmp_path / "faults.json"
    path.write_text(json.dumps(faults))
    expected = [faults[0], {"hangup": True}, faults[2]]
    assert parse_script(str(path)) == expected
    assert parse_script(json.dumps(faults)) == expected


@pytest.mark.parametrize(
    "value",
    [
        "explode",
        "slow",
        "slow:x",
        "500:x",
        "99",
        "/nonexistent/faults.json",
        '{"status": 500}',
        '[{"status": 500, "colour": "red"}]',
        "[{",
    ],
)
def test_parse_script_refuses_what_it_cannot_play(value):
    with pytest.raises(ValueError):
        parse_script(value)


# ----------------------------------------------------------------------------- state and control


def test_state_is_bounded():
    state = EmulatorState(max_sessions=3, max_requests=2)
    with serve_in_thread(state=state) as emu:
        ids = [create(emu).json()["id"] for _ in range(5)]
        assert list(state.sessions) == ids[2:]
        assert len(state.received()) == 2
        assert cancel(emu, ids[0]).status_code == 404  # the oldest was dropped
        assert cancel(emu, ids[4]).status_code == 200
        assert state.stats()["requests"] == 7


def test_stored_sessions_give_the_cycle_collector_nothing_to_walk():
    # A load test stores up to 100,000 sessions. Held as dicts, they made each full pass of the
    # collector pause every answer in flight (docs/benchmarks.md).
    state = EmulatorState()
    with serve_in_thread(state=state) as emu:
        session = create(emu).json()
    gc.collect()
    before = len(gc.get_objects())
    for number in range(1000):
        state.store_session({**session, "id": f"cksess_{number}"})
    gc.collect()
    assert len(gc.get_objects()) - before < 100
    assert state.get_session("cksess_999") == {**session, "id": "cksess_999"}
    assert state.stats()["sessions_stored"] == 1001


def test_control_endpoints(emu):
    session = create(emu).json()
    create(emu, headers={})
    stored = requests.get(f"{emu.control_url}/sessions/{session['id']}", timeout=5)
    assert stored.status_code == 200
    assert stored.json() == session
    missing = requests.get(f"{emu.control_url}/sessions/cksess_nope", timeout=5)
    assert missing.status_code == 404
    stats = requests.get(f"{emu.control_url}/stats", timeout=5).json()
    assert stats["requests"] == 2
    assert stats["created"] == 1
    assert stats["by_status"] == {"200": 1, "401": 1}
    assert stats["sessions_stored"] == 1
    emu.state.push_faults(["500"])
    assert requests.post(f"{emu.control_url}/reset", timeout=5).json() == {"reset": True}
    stats = requests.get(f"{emu.control_url}/stats", timeout=5).json()
    assert (stats["requests"], stats["sessions_stored"], stats["faults_queued"]) == (0, 0, 0)
    assert emu.state.received() == []


def test_an_expired_session_reads_as_expired(emu):
    body = {**BODY, "expires_after": {"anchor": "created_at", "seconds": 1}}
    session = create(emu, body).json()
    emu.state.store_session({**session, "expires_at": int(time.time()) - 1})
    assert emu.state.get_session(session["id"])["status"] == "expired"
    assert emu.state.sessions[session["id"]]["status"] == "active"  # as stored


def test_serve_in_thread_reports_a_port_in_use(server):
    with pytest.raises(OSError):
        serve_in_thread(port=server.port)


# ----------------------------------------------------------------------------- packaging


def test_the_emulator_does_not_import_django():
    code = "import sys, emulator.server; assert 'django' not in sys.modules, 'django'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, timeout=30)


def test_run_serves_until_sigterm():
    code = (
        "from emulator.server import run\n"
        "run(port=0, on_ready=lambda url: print(url, flush=True))\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        base_url = process.stdout.readline().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", base_url)
        response = requests.post(
            f"{base_url}/chatkit/sessions", json=BODY, headers=HEADERS, timeout=5
        )
        assert response.status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()
        process.stdout.close()


# ----------------------------------------------------------------------------- management command


def django_ready():
    from django.apps import apps

    return apps.ready


# Under `-p no:django` nothing sets Django up; pytest-django does, and then these run.
needs_django = pytest.mark.skipif(
    not os.environ.get("DJANGO_SETTINGS_MODULE") or not django_ready(),
    reason="the management command needs Django set up: run under pytest-django",
)


@needs_django
def test_command_passes_options_and_prints_the_base_url(monkeypatch):
    from io import StringIO

    from django.core.management import call_command

    seen = {}

    def fake_run(**options):
        seen.update(options)
        options["on_ready"]("http://127.0.0.1:9999/v1")

    monkeypatch.setattr("emulator.server.run", fake_run)
    out = StringIO()
    call_command(
        "chatkit_emulator",
        "--port",
        "9999",
        "--latency-ms",
        "5",
        "--fail-rate",
        "0.25",
        "--script",
        "500,ok",
        "--api-key",
        "sk-a",
        "--api-key",
        "sk-b",
        "--workflow",
        "wf_x",
        stdout=out,
    )
    assert "OPENAI_BASE_URL=http://127.0.0.1:9999/v1" in out.getvalue()
    assert seen["host"] == "127.0.0.1"
    assert seen["port"] == 9999
    assert seen["latency_ms"] == 5
    assert seen["fail_rate"] == 0.25
    assert seen["script"] == [{"status": 500}, {"ok": True}]
    assert seen["api_keys"] == ["sk-a", "sk-b"]
    assert seen["workflows"] == ["wf_x"]


@needs_django
@pytest.mark.parametrize(
    "argv",
    [
        ["--fail-rate", "1.5"],
        ["--fail-rate", "-1"],
        ["--latency-ms", "-5"],
        ["--script", "explode"],
        ["--port", "70000"],
    ],
)
def test_command_refuses_bad_options(monkeypatch, argv):
    from django.core.management import CommandError, call_command

    monkeypatch.setattr("emulator.server.run", lambda **options: pytest.fail("should not start"))
    with pytest.raises(CommandError):
        call_command("chatkit_emulator", *argv)


@needs_django
def test_command_reports_a_port_in_use():
    from django.core.management import CommandError, call_command

    with serve_in_thread() as running:
        with pytest.raises(CommandError, match="Cannot start the emulator"):
            call_command("chatkit_emulator", "--port", str(running.port))
