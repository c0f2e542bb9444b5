"""A local stand-in for OpenAI's ChatKit sessions API, for development, demos, tests and load tests.

It answers like https://api.openai.com/v1/chatkit/sessions as the OpenAPI spec, openai-python's
types and user reports describe it (same fields, same error envelope, same messages; unknown
parameters are refused, as OpenAI's newer endpoints do). It can also be told to misbehave (5xx,
429, HTML bodies, slowness, dropped or hanging connections) so that the broker's retries and
timeouts are exercised over a real socket.

Deliberately free of Django: the management command and the tests import it, and a load test can
run it with nothing but aiohttp installed.
"""

# The package is split by what each module holds; these re-exports keep every import that named
# the single module working unchanged (`from sessions_api import emulator`, `emulator.run`, ...).
from sessions_api.emulator.faults import GARBAGE_BODY as GARBAGE_BODY
from sessions_api.emulator.faults import SHORTHAND_HELP as SHORTHAND_HELP
from sessions_api.emulator.faults import parse_script
from sessions_api.emulator.server import STATE as STATE
from sessions_api.emulator.server import RunningEmulator, build_app, run, serve_in_thread
from sessions_api.emulator.state import RECORDED_BODY_BYTES as RECORDED_BODY_BYTES
from sessions_api.emulator.state import EmulatorState
from sessions_api.emulator.validation import BAD_KEY_MESSAGE as BAD_KEY_MESSAGE
from sessions_api.emulator.validation import BETA_MESSAGE as BETA_MESSAGE
from sessions_api.emulator.validation import DEFAULT_EXPIRES_SECONDS as DEFAULT_EXPIRES_SECONDS
from sessions_api.emulator.validation import (
    DEFAULT_MAX_REQUESTS_PER_MINUTE as DEFAULT_MAX_REQUESTS_PER_MINUTE,
)
from sessions_api.emulator.validation import JSON_MESSAGE as JSON_MESSAGE
from sessions_api.emulator.validation import MAX_EXPIRES_SECONDS as MAX_EXPIRES_SECONDS
from sessions_api.emulator.validation import MAX_FILE_SIZE_MB as MAX_FILE_SIZE_MB
from sessions_api.emulator.validation import (
    MAX_STATE_VARIABLE_KEY_LENGTH as MAX_STATE_VARIABLE_KEY_LENGTH,
)
from sessions_api.emulator.validation import MAX_STATE_VARIABLES as MAX_STATE_VARIABLES
from sessions_api.emulator.validation import MISSING_KEY_MESSAGE as MISSING_KEY_MESSAGE
from sessions_api.emulator.validation import RATE_LIMIT_MESSAGE as RATE_LIMIT_MESSAGE
from sessions_api.emulator.validation import SERVER_ERROR_MESSAGE as SERVER_ERROR_MESSAGE
from sessions_api.emulator.validation import mask_key as mask_key

__all__ = [
    "EmulatorState",
    "RunningEmulator",
    "build_app",
    "parse_script",
    "run",
    "serve_in_thread",
]
