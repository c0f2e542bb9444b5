from django.contrib import admin
from django.urls import path, re_path

from broker.metrics_endpoint import metrics
from broker.views import liveness, readiness, scheduler_health
from chat.views import chat_identity, chat_page
from sessions_api.apis import ChatKitSessionCreateApi, csrf_token

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
    path("api/csrf/", csrf_token, name="csrf-token"),
]
