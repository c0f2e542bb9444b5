from django.http import HttpRequest, HttpResponse, JsonResponse

from logs import request_id


class RejectNulBytesMiddleware:
    """Answer 400 to a query string carrying a NUL byte.

    Nothing legitimate sends one, and PostgreSQL refuses NUL in text, so an admin filter or
    search with `%00` used to be a 500. Form and JSON fields are covered by the form and
    serializer fields, which already reject NUL.
    """

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if any("\x00" in key or "\x00" in "".join(values) for key, values in request.GET.lists()):
            message = "Query parameters must not contain NUL bytes."
            body = {"error": {"code": "invalid_request", "message": message, "request_id": None}}
            return JsonResponse(body, status=400)
        return self.get_response(request)


class LogContextMiddleware:
    """Clear the request id a thread's previous request bound (logs.py), as a request starts.

    Cleared at the start rather than reset at the end: Django logs a response's status after
    the middleware has returned it, and that line must still carry the id.
    """

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id.set(None)
        return self.get_response(request)
