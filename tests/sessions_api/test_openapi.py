"""The OpenAPI schema: valid, warning-free, and generated from the error vocabulary."""

import gc
import json
import re
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.contrib.staticfiles import finders
from django.core.management import call_command
from rest_framework import status

from sessions_api import errors
from sessions_api.openapi import error_classes, error_responses, error_table, when

README = Path(django_settings.BASE_DIR) / "README.md"
URL = "/api/chatkit/session/"
OPERATION = (URL, "post")


def served_schema(client) -> dict:
    response = client.get("/api/schema/?format=json")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/vnd.oai.openapi+json")
    return json.loads(response.content)


def session_operation(schema: dict) -> dict:
    path, method = OPERATION
    return schema["paths"][path][method]


def test_the_schema_validates_with_no_warning(tmp_path):
    # As `manage.py spectacular --validate --fail-on-warn` does: it raises on any warning.
    target = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(target))
    assert "/api/chatkit/session/" in target.read_text()


def test_the_schema_is_served_as_yaml_by_default(client):
    response = client.get("/api/schema/")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/vnd.oai.openapi")
    assert response.content.startswith(b"openapi: 3.0.3")


def test_the_schema_documents_the_api_and_no_health_or_legacy_path(client):
    schema = served_schema(client)
    # The guide's old path answers the same view; health checks are for load balancers.
    assert list(schema["paths"]) == ["/api/chatkit/session/", "/api/csrf/"]
    assert list(schema["paths"]["/api/chatkit/session/"]) == ["post"]
    csrf = schema["paths"]["/api/csrf/"]["get"]
    assert "security" not in csrf and "security" not in schema  # nothing to sign in for
    body = csrf["responses"]["200"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/CsrfToken"}
    assert list(schema["components"]["schemas"]["CsrfToken"]["properties"]) == ["csrf_token"]


def test_the_request_and_the_success_body(client):
    schema = served_schema(client)
    operation = session_operation(schema)
    assert operation["requestBody"].get("required", False) is False  # an empty body is fine
    request = schema["components"]["schemas"]["SessionRequest"]
    assert set(request["properties"]) == {"workflow_id", "current_client_secret"}
    assert request.get("required", []) == []
    assert request["properties"]["current_client_secret"]["nullable"] is True
    success = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert success == {"$ref": "#/components/schemas/Session"}
    session = schema["components"]["schemas"]["Session"]
    assert session["required"] == ["client_secret", "expires_at"]
    assert session["properties"]["expires_at"]["type"] == "integer"


def test_a_blank_workflow_id_is_invalid_in_the_schema_as_in_the_app(db, api_client, upstream):
    # Found by the contract fuzzer: the schema let "" through, the serializer refuses it.
    schema = served_schema(api_client)
    assert (
        schema["components"]["schemas"]["SessionRequest"]["properties"]["workflow_id"]["minLength"]
        == 1
    )
    response = api_client.post(URL, {"workflow_id": ""}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"


def test_every_error_class_is_documented_with_its_status_and_when(client):
    responses = session_operation(served_schema(client))["responses"]
    for error_class in error_classes():
        response = responses[str(error_class.status_code)]
        envelope = response["content"]["application/json"]["schema"]["properties"]["error"]
        assert error_class.code in envelope["properties"]["code"]["enum"], error_class
        assert f"`{error_class.code}`: {when(error_class)}" in response["description"]
    documented = {int(code) for code in responses} - {200}
    assert documented == {error_class.status_code for error_class in error_classes()}


def test_the_vocabulary_is_complete():
    pairs = {(error_class.status_code, error_class.code) for error_class in error_classes()}
    assert {
        (500, "internal_error"),
        (400, "invalid_request"),
        (413, "invalid_request"),
        (415, "invalid_request"),
        (405, "method_not_allowed"),
        (403, "csrf_failed"),
        (503, "upstream_unavailable"),
        (502, "upstream_unavailable"),
        (504, "upstream_timeout"),
    } <= pairs
    assert len(pairs) == len(error_classes()) == 20


def test_every_error_class_says_when_it_is_answered():
    for error_class in error_classes():
        # Its own docstring, not its parent's: the schema shows it to API users.
        assert error_class.__dict__.get("__doc__"), f"{error_class.__name__} has no docstring"


def test_a_new_error_class_appears_in_the_schema_by_itself():
    class TeapotRefused(errors.ApplicationError):
        """The server is a teapot today."""

        status_code = status.HTTP_418_IM_A_TEAPOT
        code = "teapot"

    try:
        # What the view's schema is made of when errors.py is imported with the new class.
        teapot = error_responses()[418]
        assert teapot.description == "- `teapot`: The server is a teapot today."
        assert teapot.response["properties"]["error"]["properties"]["code"]["enum"] == ["teapot"]
        assert "| 418 | `teapot` | The server is a teapot today. |" in error_table()
    finally:
        del TeapotRefused
        gc.collect()  # __subclasses__() holds it weakly: gone for the tests after this one
    assert "teapot" not in error_table()


def test_retry_after_is_documented_where_it_is_sent(client):
    responses = session_operation(served_schema(client))["responses"]
    assert set(responses["429"]["headers"]) == {"Retry-After"}
    assert (
        "`upstream_rate_limited`, `upstream_unavailable`"
        in (responses["503"]["headers"]["Retry-After"]["description"])
    )
    assert "headers" not in responses["502"]


def test_signed_in_callers_need_the_session_cookie_and_the_csrf_token(client):
    schema = served_schema(client)
    # Either both (signed in), or nothing at all (a signed-out browser).
    assert session_operation(schema)["security"] == [{"sessionCookie": [], "csrfToken": []}, {}]
    schemes = schema["components"]["securitySchemes"]
    assert schemes["sessionCookie"] == schemes["sessionCookie"] | {
        "in": "cookie",
        "name": "sessionid",
    }
    assert schemes["csrfToken"] == schemes["csrfToken"] | {"in": "header", "name": "X-CSRFToken"}


def test_the_readme_error_table_is_the_generated_one():
    text = README.read_text()
    table = error_table()
    assert table in text, f"Put this table in README.md (sessions_api/openapi.py):\n\n{table}"


# --- the docs pages -----------------------------------------------------------------------------


def test_swagger_ui_loads_its_start_up_script_as_a_file(client):
    page = client.get("/api/docs/")
    assert page.status_code == 200
    html = page.content.decode()
    scripts = re.findall(r"<script([^>]*)>", html)
    # No inline script: the Content-Security-Policy allows only files from this server.
    assert scripts and all('src="/' in attributes for attributes in scripts), scripts
    assert '<script src="/api/docs/?script=">' in html
    script = client.get("/api/docs/?script=")
    assert script["Content-Type"].startswith("application/javascript")
    assert b'"/api/schema/"' in script.content


@pytest.mark.parametrize("url", ["/api/docs/", "/api/docs/redoc/"])
def test_the_docs_pages_use_only_files_served_here(client, url):
    html = client.get(url).content.decode()
    assert "http://" not in html and "https://" not in html  # no CDN, no web fonts
    for asset in re.findall(r'(?:src|href)="/static/([^"]+)"', html):
        assert finders.find(asset), asset
    assert "/static/drf_spectacular_sidecar/" in html
