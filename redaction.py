"""Scrub keys and client secrets out of text before it is logged, stored or shown.

Beside the apps, not inside either: the upstream client (sessions_api) and the audit log
(audit) both clean text with it, and neither app should import the other for that. Django-free
on purpose: the client must not import Django.
"""

import logging
import re
from collections.abc import Iterable

REDACTED = "[REDACTED]"

# No word boundaries before the prefixes: a key glued to other text ("api_key%3Dsk-…",
# "xek_…") must still be caught, and over-redacting a word like "task-123456" is harmless.
# The `*` covers OpenAI's partially masked form ("sk-abc*****wxyz") in its 401 messages.
_PATTERNS = (
    # Never ends on ".", so the full stop after a key in a sentence survives.
    (re.compile(r"sk-[A-Za-z0-9_*.\-]{5,}[A-Za-z0-9_*\-]"), "sk-" + REDACTED),
    (re.compile(r"ek_[A-Za-z0-9_]{10,}"), "ek_" + REDACTED),
    # Any control character between the word and the token counts as a space: clean_text turns
    # it into one, and "Bearer\x01token" must not come out as "Bearer token".
    (re.compile(r"(?i)\b(bearer)[\s\x00-\x1f\x7f-\x9f]+[^\s\"'<>,;]+"), r"\1 " + REDACTED),
)
# C0/C1 control characters and Unicode line separators: they forge or break log lines.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    # Longest first, so a secret that contains a shorter one is replaced whole.
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def clean_text(text: str, *, limit: int = 2048, secrets: Iterable[str] = ()) -> str:
    """One safe line of at most `limit` characters ("…" included), for logs and audit columns."""
    # Redact before truncating: a cut could leave a key prefix too short for the patterns.
    text = _CONTROL.sub(" ", redact(text, secrets))
    if len(text) <= limit:
        return text
    return text[: limit - 1] + "…" if limit > 0 else ""  # no room even for the "…"


class RedactSecretsFilter(logging.Filter):
    """A second line of defence on log handlers: key-shaped strings in a record's message, its
    traceback and its stack are redacted, whatever code logged them and however."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = [secret for secret in secrets if secret]

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage(), self.secrets), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, self.secrets)
        return True
