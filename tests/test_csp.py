"""Our CSP middleware builds the settings' policies once; it must answer exactly as django-csp."""

import csp.middleware
import pytest
from csp.constants import HEADER, HEADER_REPORT_ONLY, NONCE, NONE, SELF
from csp.decorators import csp_exempt, csp_update
from csp.exceptions import CSPNonceError
from django.http import HttpResponse
from django.test import RequestFactory

from broker.middleware import CSPMiddleware

REPORT_ONLY = {"DIRECTIVES": {"default-src": [NONE], "report-uri": "/csp-reports/"}}


def plain(request):
    return HttpResponse("ok")


@csp_update({"script-src": "https://cdn.example"})
def updated(request):
    return HttpResponse("ok")


@csp_exempt()
def exempt(request):
    return HttpResponse("ok")


def not_found(request):
    return HttpResponse("missing", status=404)


def with_nonce(request):
    return HttpResponse(f"<script nonce='{request.csp_nonce}'></script>")


def headers_of(middleware_class, view, path="/page/"):
    request = RequestFactory().get(path)
    response = middleware_class(view)(request)
    return {name: response.get(name) for name in (HEADER, HEADER_REPORT_ONLY)}


def policies(view, path="/page/") -> tuple[dict, dict]:
    ours = headers_of(CSPMiddleware, view, path)
    theirs = headers_of(csp.middleware.CSPMiddleware, view, path)
    return ours, theirs


@pytest.mark.parametrize("view", [plain, updated, exempt, not_found])
@pytest.mark.parametrize("report_only", [False, True])
def test_headers_are_django_csps_for_every_kind_of_response(settings, view, report_only):
    if report_only:
        settings.CONTENT_SECURITY_POLICY_REPORT_ONLY = REPORT_ONLY
    ours, theirs = policies(view)
    assert ours == theirs
    assert (ours[HEADER] is None) == (view is exempt)
    assert (ours[HEADER_REPORT_ONLY] is not None) == report_only  # csp_exempt() spares it


def test_a_decorated_view_gets_its_own_policy_and_the_next_plain_one_the_settings(settings):
    assert "cdn.example" in headers_of(CSPMiddleware, updated)[HEADER]
    assert "cdn.example" not in headers_of(CSPMiddleware, plain)[HEADER]


def test_a_page_that_used_a_nonce_gets_it_in_its_header(settings):
    settings.CONTENT_SECURITY_POLICY = {"DIRECTIVES": {"script-src": [SELF, NONCE]}}
    request = RequestFactory().get("/page/")
    response = CSPMiddleware(with_nonce)(request)
    nonce = request.csp_nonce
    assert f"'nonce-{nonce}'" in response[HEADER]
    assert f"nonce='{nonce}'" in response.content.decode()


def test_a_nonce_asked_for_after_the_header_is_written_is_an_error(settings):
    request = RequestFactory().get("/page/")
    CSPMiddleware(plain)(request)
    with pytest.raises(CSPNonceError):
        str(request.csp_nonce)


def test_excluded_prefixes_are_left_to_django_csp(settings):
    settings.CONTENT_SECURITY_POLICY = {
        "EXCLUDE_URL_PREFIXES": ["/raw/"],
        "DIRECTIVES": {"default-src": [SELF]},
    }
    ours, theirs = policies(plain, path="/raw/file")
    assert ours == theirs == {HEADER: None, HEADER_REPORT_ONLY: None}
    assert headers_of(CSPMiddleware, plain)[HEADER] == "default-src 'self'"


def server_error(request):
    return HttpResponse("broken", status=500)


@pytest.mark.parametrize("view", [not_found, server_error])
def test_debug_error_pages_get_no_policy_as_with_django_csp(settings, view):
    settings.DEBUG = True
    ours, theirs = policies(view)
    assert ours == theirs == {HEADER: None, HEADER_REPORT_ONLY: None}


@pytest.mark.parametrize("debug", [False, True])
def test_plain_responses_do_not_build_the_policy_again(settings, monkeypatch, debug):
    settings.DEBUG = debug
    headers_of(CSPMiddleware, plain)  # built once here, at most
    built = []
    monkeypatch.setattr(
        csp.middleware, "build_policy", lambda **kwargs: built.append(kwargs) or "rebuilt"
    )
    for view in (plain, plain, not_found if not debug else plain):
        assert "frame-ancestors 'none'" in headers_of(CSPMiddleware, view)[HEADER]
    assert built == []
    headers_of(CSPMiddleware, updated)  # a decorated view's own policy is django-csp's to build
    assert len(built) == 2  # the policy and the report-only one


def test_a_changed_policy_is_used_at_once(settings):
    assert "frame-ancestors 'none'" in headers_of(CSPMiddleware, plain)[HEADER]
    settings.CONTENT_SECURITY_POLICY = {"DIRECTIVES": {"default-src": [SELF]}}
    assert headers_of(CSPMiddleware, plain)[HEADER] == "default-src 'self'"


def test_api_answers_carry_the_policy(client):
    response = client.get("/api/chatkit/session/")  # 405, without a database
    assert response.status_code == 405
    assert "frame-ancestors 'none'" in response[HEADER]
