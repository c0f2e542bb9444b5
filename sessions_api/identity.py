"""Who a caller is to ChatKit: the `user` value sent upstream.

ChatKit scopes thread history by `user`, so the value must be unique and stable per person and
derived here, never taken from the browser. Logged-in users get an HMAC of their primary key
(pseudonymous, unguessable, stable across username changes); each anonymous browser gets its own
random id, kept in a signed cookie. There is never one shared "anonymous" id: with one, every
logged-out visitor would see every other visitor's chats.
"""

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse

ANON_COOKIE_SALT = "sessions_api.identity.anon"
USER_ID_MODES = ("hmac", "username", "pk")
_ANON_IDENTITY = "_chatkit_anon_identity"  # where a request keeps what its cookie said


@dataclass(frozen=True)
class ChatKitIdentity:
    user_ref: str
    anonymous: bool
    # A new anonymous id that the response must set as a cookie; None when nothing changes.
    new_anon_id: str | None = None


def user_ref_for_user(user) -> str:
    mode = settings.CHATKIT_USER_ID_MODE
    if mode == "username":
        return user.get_username()
    if mode == "pk":
        return str(user.pk)
    if not settings.CHATKIT_USER_ID_SECRET:
        # A keyless HMAC would make every user's id guessable: refuse (a check warns at start).
        raise ImproperlyConfigured("CHATKIT_USER_ID_SECRET is not set.")
    digest = hmac.new(
        settings.CHATKIT_USER_ID_SECRET.encode(), f"user:{user.pk}".encode(), hashlib.sha256
    ).hexdigest()
    return f"u_{digest[:32]}"


def anon_identity_of(request: HttpRequest) -> ChatKitIdentity | None:
    """The identity this browser's signed cookie carries, or None without a valid cookie.

    Read once per request: the throttle asks first, then the view (through DRF's Request,
    which wraps the same Django request); the cookie's signature is checked once.
    """
    django_request = getattr(request, "_request", request)
    if _ANON_IDENTITY in django_request.__dict__:
        return django_request.__dict__[_ANON_IDENTITY]
    anon_id = django_request.get_signed_cookie(
        settings.CHATKIT_ANON_COOKIE_NAME,
        default=None,
        salt=ANON_COOKIE_SALT,
        max_age=settings.CHATKIT_ANON_COOKIE_AGE,
    )
    identity = ChatKitIdentity(user_ref=f"anon_{anon_id}", anonymous=True) if anon_id else None
    django_request.__dict__[_ANON_IDENTITY] = identity
    return identity


def identity_resolve(request: HttpRequest) -> ChatKitIdentity:
    """The caller's identity; anonymous callers keep (or are given) a per-browser id."""
    if request.user.is_authenticated:
        return ChatKitIdentity(user_ref=user_ref_for_user(request.user), anonymous=False)
    if identity := anon_identity_of(request):
        return identity
    anon_id = secrets.token_hex(16)
    return ChatKitIdentity(user_ref=f"anon_{anon_id}", anonymous=True, new_anon_id=anon_id)


def anon_cookie_set(response: HttpResponse, anon_id: str) -> None:
    response.set_signed_cookie(
        settings.CHATKIT_ANON_COOKIE_NAME,
        anon_id,
        salt=ANON_COOKIE_SALT,
        max_age=settings.CHATKIT_ANON_COOKIE_AGE,
        httponly=True,
        samesite="Lax",
        secure=not settings.DEBUG,
    )
