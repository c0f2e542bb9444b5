import logging
import sys

import pytest

from redaction import RedactSecretsFilter, clean_text, redact


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("key sk-abcdef123456 used", "key sk-[REDACTED] used"),
        ("sk-proj-Ab_c.d-e*f", "sk-[REDACTED]"),
        (
            "Incorrect API key provided: sk-abc***********wxyz.",
            "Incorrect API key provided: sk-[REDACTED].",
        ),
        ("api_key%3Dsk-abcdef123", "api_key%3Dsk-[REDACTED]"),
        ("sk-short", "sk-short"),
        ("sk-abcdef", "sk-[REDACTED]"),  # the shortest that counts: six characters after "sk-"
        ("sk-abcd.", "sk-abcd."),
        ("secret ek_6899a0c1d2e3f4a5b6c7_d8e9", "secret ek_[REDACTED]"),
        ("ek_short", "ek_short"),
        ("ek_abcdefghij", "ek_[REDACTED]"),  # the shortest that counts: ten after "ek_"
        ("ek_abcdefghi", "ek_abcdefghi"),
        ("xek_4f1c9a7e2b5d8c3f", "xek_[REDACTED]"),
        ("Authorization: Bearer abc.def-ghi", "Authorization: Bearer [REDACTED]"),
        ('{"auth": "bearer xyz123"}', '{"auth": "bearer [REDACTED]"}'),
        ("Bearer sk-abcdef123456", "Bearer [REDACTED]"),
        ("BEARER abc, then more", "BEARER [REDACTED], then more"),
        ("Bearer", "Bearer"),
        ("", ""),
        ("Grüße aus Köln, 東京 → ok", "Grüße aus Köln, 東京 → ok"),
        ("nothing to hide here", "nothing to hide here"),
    ],
)
def test_redact_key_like_tokens(text, expected):
    assert redact(text) == expected


def test_redact_exact_secrets_first_and_longest_first():
    text = "user=alice token=hunter2hunter2 short=hunter2"
    assert redact(text, ["hunter2", "", "hunter2hunter2"]) == (
        "user=alice token=[REDACTED] short=[REDACTED]"
    )


def test_redact_replaces_a_secret_that_contains_another_whole():
    # By length, not by text: "hunter2" sorts after "Hunter2hunter2" and would leave "Hunter2".
    text = "token=Hunter2hunter2"
    assert redact(text, ["hunter2", "Hunter2hunter2"]) == "token=[REDACTED]"
    assert redact(text, ["Hunter2hunter2", "hunter2"]) == "token=[REDACTED]"


def test_redact_is_idempotent():
    once = redact("Bearer sk-abcdef123456 ek_abcdefghijklmnop", ["alice"])
    assert redact(once, ["alice"]) == once


def test_clean_text_replaces_line_breaks_and_control_characters():
    assert clean_text("a\r\nb\tc\x00d\x1be\u2028f") == "a  b c d e f"


@pytest.mark.parametrize(
    "character",
    ["\x00", "\x1f", "\x7f", "\x80", "\x85", "\x9b", "\x9f", "\u2028", "\u2029"],
    ids=["NUL", "US", "DEL", "PAD", "NEL", "CSI", "APC", "LS", "PS"],
)
def test_clean_text_replaces_c1_controls_and_unicode_line_separators(character):
    # NEL, LS and PS end a line for many log viewers; CSI starts a terminal escape sequence.
    assert clean_text(f"ok{character}forged: admin logged in") == "ok forged: admin logged in"


def test_clean_text_keeps_printable_text_next_to_the_control_ranges():
    text = "~ \xa0 é ü 東京 \u2027 ✓"  # "~" is \x7e, right below DEL; NBSP right above C1
    assert clean_text(text) == text
    assert clean_text("") == ""


def test_clean_text_truncates_with_an_ellipsis():
    assert clean_text("x" * 10, limit=10) == "x" * 10
    assert clean_text("x" * 11, limit=10) == "x" * 9 + "…"
    assert len(clean_text("y" * 5000)) == 2048
    assert clean_text("y" * 2048) == "y" * 2048
    assert clean_text("xy", limit=1) == "…"


def test_clean_text_redacts_before_truncating():
    # Cut first, "sk-abc" would be too short for the pattern and its start would leak.
    assert clean_text("sk-abcdefghijkl", limit=7) == "sk-[RE…"
    assert clean_text("pw=p4ss", secrets=["p4ss"]) == "pw=[REDACTED]"


def log_through_filter(*args, exc_info=None, stack_info=False, secrets=()) -> str:
    """One record, through the filter, formatted as a handler would."""
    record = logging.getLogger("tests.redaction").makeRecord(
        "tests.redaction", logging.ERROR, __file__, 1, *args, exc_info, sinfo=None
    )
    if stack_info:
        record.stack_info = "Stack (most recent call last):\n  ek_abcdefghijklmnop hunter2hunter2"
    assert RedactSecretsFilter(secrets).filter(record) is True
    return logging.Formatter("%(message)s").format(record)


def test_the_log_filter_redacts_the_message_and_its_arguments():
    text = log_through_filter("calling with %s and %r", ("sk-abcdef123456", "ek_abcdefghijk"))
    assert text == "calling with sk-[REDACTED] and 'ek_[REDACTED]'"


def test_the_log_filter_redacts_exact_secrets_tracebacks_and_stacks():
    try:
        raise RuntimeError("upstream said: token hunter2hunter2 refused, Bearer abc.def")
    except RuntimeError:
        failure = sys.exc_info()
    text = log_through_filter(
        "failed for %s", ("hunter2hunter2",), exc_info=failure, stack_info=True,
        secrets=["hunter2hunter2", ""],
    )  # fmt: skip
    assert "hunter2hunter2" not in text and "abc.def" not in text
    assert text.endswith("Stack (most recent call last):\n  ek_[REDACTED] [REDACTED]")
    assert text.startswith("failed for [REDACTED]\nTraceback")
    assert "RuntimeError: upstream said: token [REDACTED] refused, Bearer [REDACTED]" in text


def test_the_console_handler_of_the_settings_redacts():
    # The filter is wired where logs leave the process (settings.LOGGING), for every logger.
    [console] = [
        handler
        for handler in logging.getLogger().handlers
        if any(isinstance(f, RedactSecretsFilter) for f in handler.filters)
    ]
    record = logging.getLogger("sessions_api.anywhere").makeRecord(
        "sessions_api.anywhere", logging.ERROR, __file__, 1, "oops %s", ("sk-abcdef123456!",), None
    )
    assert console.filter(record)
    assert console.format(record).endswith("oops sk-[REDACTED]!")
