"""Create-request validation in the upstream's order, with OpenAI's error messages and envelope."""

from __future__ import annotations

DEFAULT_EXPIRES_SECONDS = 600
MAX_EXPIRES_SECONDS = 600
DEFAULT_MAX_REQUESTS_PER_MINUTE = 10
MAX_STATE_VARIABLES = 64
MAX_STATE_VARIABLE_KEY_LENGTH = 64
MAX_FILE_SIZE_MB = 512

MISSING_KEY_MESSAGE = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header "
    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY). You can obtain an API key from "
    "https://platform.openai.com/account/api-keys."
)
BAD_KEY_MESSAGE = (
    "Incorrect API key provided: {masked}. You can find your API key at "
    "https://platform.openai.com/account/api-keys."
)
BETA_MESSAGE = "You must provide the 'OpenAI-Beta' header to access the Chatkit API."
JSON_MESSAGE = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
    "your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not "
    "valid JSON. If you have trouble figuring out how to fix this, please contact us through our "
    "help center at help.openai.com.)"
)
SERVER_ERROR_MESSAGE = "The server had an error while processing your request. Sorry about that!"
RATE_LIMIT_MESSAGE = (
    "Rate limit reached for chatkit sessions in organization org-emulator on requests per min "
    "(RPM): Limit 10, Used 10, Requested 1. Please try again in {seconds}s."
)


class _ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.payload = {"error": {"message": message, "type": type, "param": param, "code": code}}


def mask_key(key: str) -> str:
    """OpenAI's masking (first 8 characters, stars, last 4); short keys are masked harder so the
    whole key never appears."""
    if len(key) >= 20:
        return key[:8] + "*" * (len(key) - 12) + key[-4:]
    keep = len(key) // 4
    return key[:keep] + "*" * (len(key) - 2 * keep) + (key[-keep:] if keep else "")


# ---------------------------------------------------------------------------- validation


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _invalid_type(param: str, expected: str, value: object) -> _ApiError:
    got = _type_name(value)
    message = f"Invalid type for '{param}': expected {expected}, but got {got} instead."
    return _ApiError(400, message, param=param, code="invalid_type")


def _missing(param: str) -> _ApiError:
    return _ApiError(
        400,
        f"Missing required parameter: '{param}'.",
        param=param,
        code="missing_required_parameter",
    )


def _object(parent: dict, key: str, param: str, allowed: frozenset[str] | None) -> dict | None:
    value = parent.get(key)
    if key not in parent:
        return None
    if not isinstance(value, dict):
        raise _invalid_type(param, "an object", value)
    for name in value if allowed is not None else ():
        if name not in allowed:
            raise _ApiError(
                400,
                f"Unknown parameter: '{param}.{name}'.",
                param=f"{param}.{name}",
                code="unknown_parameter",
            )
    return value


def _string(parent: dict, key: str, param: str, *, required: bool = False) -> str | None:
    if key not in parent:
        if required:
            raise _missing(param)
        return None
    value = parent[key]
    if not isinstance(value, str):
        raise _invalid_type(param, "a string", value)
    if not value:
        raise _ApiError(
            400,
            f"Invalid '{param}': empty string. Expected a string with minimum length 1, "
            "but got an empty string instead.",
            param=param,
            code="empty_string",
        )
    return value


def _bool(parent: dict, key: str, param: str) -> bool | None:
    value = parent.get(key)
    if key in parent and not isinstance(value, bool):
        raise _invalid_type(param, "a boolean", value)
    return value


def _integer(
    parent: dict,
    key: str,
    param: str,
    *,
    minimum: int,
    maximum: int | None = None,
    required: bool = False,
) -> int | None:
    if key not in parent:
        if required:
            raise _missing(param)
        return None
    value = parent[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid_type(param, "an integer", value)
    if value < minimum:
        raise _ApiError(
            400,
            f"Invalid '{param}': integer below minimum value. Expected a value >= {minimum}, "
            f"but got {value} instead.",
            param=param,
            code="integer_below_min_value",
        )
    if maximum is not None and value > maximum:
        raise _ApiError(
            400,
            f"Invalid '{param}': integer above maximum value. Expected a value <= {maximum}, "
            f"but got {value} instead.",
            param=param,
            code="integer_above_max_value",
        )
    return value


_TOP_KEYS = frozenset({"workflow", "user", "expires_after", "rate_limits", "chatkit_configuration"})
_WORKFLOW_KEYS = frozenset({"id", "version", "state_variables", "tracing"})
_ENABLED = frozenset({"enabled"})


def _validate_create(body: dict) -> dict:
    """Check a create body in the upstream's order and return the resolved session fields."""
    for name in body:
        if name not in _TOP_KEYS:
            raise _ApiError(
                400, f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter"
            )
    if "workflow" not in body:
        raise _missing("workflow")
    workflow = _object(body, "workflow", "workflow", _WORKFLOW_KEYS)
    workflow_id = _string(workflow, "id", "workflow.id", required=True)
    user = _string(body, "user", "user", required=True)

    expires_in = DEFAULT_EXPIRES_SECONDS
    expires_after = _object(
        body, "expires_after", "expires_after", frozenset({"anchor", "seconds"})
    )
    if expires_after is not None:
        anchor = _string(expires_after, "anchor", "expires_after.anchor", required=True)
        if anchor != "created_at":
            raise _ApiError(
                400,
                f"Invalid value: '{anchor}'. Supported values are: 'created_at'.",
                param="expires_after.anchor",
                code="invalid_value",
            )
        expires_in = _integer(
            expires_after,
            "seconds",
            "expires_after.seconds",
            minimum=1,
            maximum=MAX_EXPIRES_SECONDS,
            required=True,
        )

    per_minute = DEFAULT_MAX_REQUESTS_PER_MINUTE
    rate_limits = _object(
        body, "rate_limits", "rate_limits", frozenset({"max_requests_per_1_minute"})
    )
    if rate_limits is not None:
        per_minute = (
            _integer(
                rate_limits,
                "max_requests_per_1_minute",
                "rate_limits.max_requests_per_1_minute",
                minimum=1,
            )
            or per_minute
        )

    version = _string(workflow, "version", "workflow.version")
    state_variables = _object(workflow, "state_variables", "workflow.state_variables", None)
    if state_variables is not None:
        _check_state_variables(state_variables)
    tracing = _object(workflow, "tracing", "workflow.tracing", _ENABLED) or {}
    tracing_enabled = _bool(tracing, "enabled", "workflow.tracing.enabled")

    return {
        "workflow": {
            "id": workflow_id,
            "version": version,
            "state_variables": state_variables,
            "tracing": {"enabled": True if tracing_enabled is None else tracing_enabled},
        },
        "user": user,
        "expires_in": expires_in,
        "max_requests_per_1_minute": per_minute,
        "chatkit_configuration": _resolve_configuration(body),
    }


def _check_state_variables(variables: dict) -> None:
    param = "workflow.state_variables"
    if len(variables) > MAX_STATE_VARIABLES:
        raise _ApiError(
            400,
            f"Invalid '{param}': too many properties. Expected an object with at most "
            f"{MAX_STATE_VARIABLES} properties, but got an object with {len(variables)} "
            "properties instead.",
            param=param,
            code="object_above_max_properties",
        )
    for key, value in variables.items():
        if len(key) > MAX_STATE_VARIABLE_KEY_LENGTH:
            raise _ApiError(
                400,
                f"Invalid '{param}': string too long. Expected a key with maximum length "
                f"{MAX_STATE_VARIABLE_KEY_LENGTH}, but got a key with length {len(key)} instead.",
                param=param,
                code="string_above_max_length",
            )
        if value is None or not isinstance(value, str | bool | int | float):
            raise _invalid_type(f"{param}.{key}", "a string, a boolean or a number", value)


def _resolve_configuration(body: dict) -> dict:
    titling = {"enabled": True}
    upload = {"enabled": False, "max_file_size": None, "max_files": None}
    history = {"enabled": True, "recent_threads": None}
    sent = _object(
        body,
        "chatkit_configuration",
        "chatkit_configuration",
        frozenset({"automatic_thread_titling", "file_upload", "history"}),
    )
    if sent is not None:
        p = "chatkit_configuration"
        part = _object(sent, "automatic_thread_titling", f"{p}.automatic_thread_titling", _ENABLED)
        if part is not None:
            _merge(titling, enabled=_bool(part, "enabled", f"{p}.automatic_thread_titling.enabled"))
        part = _object(
            sent,
            "file_upload",
            f"{p}.file_upload",
            frozenset({"enabled", "max_file_size", "max_files"}),
        )
        if part is not None:
            _merge(
                upload,
                enabled=_bool(part, "enabled", f"{p}.file_upload.enabled"),
                max_file_size=_integer(
                    part,
                    "max_file_size",
                    f"{p}.file_upload.max_file_size",
                    minimum=1,
                    maximum=MAX_FILE_SIZE_MB,
                ),
                max_files=_integer(part, "max_files", f"{p}.file_upload.max_files", minimum=1),
            )
        part = _object(sent, "history", f"{p}.history", frozenset({"enabled", "recent_threads"}))
        if part is not None:
            _merge(
                history,
                enabled=_bool(part, "enabled", f"{p}.history.enabled"),
                recent_threads=_integer(
                    part, "recent_threads", f"{p}.history.recent_threads", minimum=1
                ),
            )
    return {"automatic_thread_titling": titling, "file_upload": upload, "history": history}


def _merge(target: dict, **values: object) -> None:
    target.update((key, value) for key, value in values.items() if value is not None)
