from django.contrib import admin
from django.urls import path, re_path
from drf_spectacular.views import (
    SpectacularAPIView,
    SpectacularRedocView,
    SpectacularSwaggerSplitView,
)
from rest_framework.negotiation import DefaultContentNegotiation

from broker.metrics_endpoint import metrics
from broker.views import liveness, readiness, scheduler_health
from chat.views import chat_identity, chat_page
from sessions_api.apis import ChatKitSessionCreateApi, CsrfTokenApi

session_create = ChatKitSessionCreateApi.as_view()

urlpatterns = [
    path("", chat_page, name="chat"),
    path("chat/identity", chat_identity, name="chat-identity"),
    path("admin/", admin.site.urls),
    path("healthz", liveness, name="health"),
    path("readyz", readiness, name="ready"),
    path("healthz/scheduler", scheduler_health, name="health-scheduler"),
    path("metrics", metrics, name="metrics"),
    # The trailing slash is optional: APPEND_SLASH cannot redirect a POST without losing its body.
    re_path(r"^api/chatkit/session/?$", session_create, name="chatkit-session-create"),
    # The path from the integration guide this service grew out of, so frontends written from it
    # keep working.
    re_path(r"^api/api/chatkit/session/?$", session_create, name="chatkit-session-create-legacy"),
    # For frontends on another origin, which cannot read this site's csrftoken cookie.
    path("api/csrf/", CsrfTokenApi.as_view(), name="csrf-token"),
    # YAML, or JSON with ?format=json: the API's own negotiation would always pick the first.
    path(
        "api/schema/",
        SpectacularAPIView.as_view(content_negotiation_class=DefaultContentNegotiation),
        name="schema",
    ),
    # The split view serves its start-up script as a file: the CSP allows no inline script.
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="schema"), name="api-docs"),
    path(
        "api/docs/redoc/",
        SpectacularRedocView.as_view(url_name="schema", template_name="sessions_api/redoc.html"),
        name="api-docs-redoc",
    ),
]
