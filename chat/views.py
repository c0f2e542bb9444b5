"""The chat page at `/`: OpenAI's ChatKit widget, wired to the session endpoint, and a panel
that shows what the broker did for this browser (who it is to ChatKit, the session's expiry,
the last error). The page's script is chat/static/chat/chat.js; nothing is inlined."""

from csp.decorators import csp_update
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_GET

from sessions_api.identity import anon_identity_of, user_ref_for_user

# Where OpenAI serves the ChatKit web component (<openai-chatkit>). The widget itself renders
# in a frame from the same origin, so this page's policy allows that origin for scripts and
# frames, and nothing else beyond the site-wide 'self'.
CHATKIT_SCRIPT_URL = "https://cdn.platform.openai.com/deployments/chatkit/chatkit.js"
CHATKIT_ORIGIN = "https://cdn.platform.openai.com"
# Enough of a user ref for a person to tell two apart, not the whole value.
SHORT_REF_LENGTH = 12


def identity_summary(request: HttpRequest) -> dict:
    """Who this browser is to ChatKit, as the page shows it.

    Never mints an anonymous id: a page view that handed out signed cookies would let a script
    collect them without meeting the session endpoint's per-address limit. A new browser gets
    its id with its first session, and the page asks again then.
    """
    if request.user.is_authenticated:
        try:
            ref = user_ref_for_user(request.user)
        except ImproperlyConfigured:  # no HMAC key: the session endpoint says so itself
            ref = None
        return {"signed_in": True, "pseudonym": _short(ref)}
    identity = anon_identity_of(request)
    return {"signed_in": False, "pseudonym": _short(identity.user_ref if identity else None)}


def _short(ref: str | None) -> str | None:
    if ref is None or len(ref) <= SHORT_REF_LENGTH:
        return ref
    return ref[:SHORT_REF_LENGTH] + "…"


@require_GET
@ensure_csrf_cookie  # the script reads the token from the cookie for signed-in users' POSTs
@csp_update({"script-src": CHATKIT_ORIGIN, "frame-src": CHATKIT_ORIGIN})
def chat_page(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "chat/index.html",
        {
            "identity": identity_summary(request),
            "chatkit_script_url": CHATKIT_SCRIPT_URL,
            "session_url": reverse("chatkit-session-create"),
            "identity_url": reverse("chat-identity"),
        },
    )


@require_GET
def chat_identity(request: HttpRequest) -> JsonResponse:
    """What identity_summary says, for the page to show after a session gave a new browser its
    id (the cookie that holds it is HttpOnly, out of the script's reach)."""
    response = JsonResponse(identity_summary(request))
    response["Cache-Control"] = "no-store"
    return response
