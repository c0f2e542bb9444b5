import pytest

from sessions_api.redaction import clean_text, redact


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
        ("secret ek_6899a0c1d2e3f4a5b6c7_d8e9", "secret ek_[REDACTED]"),
        ("ek_short", "ek_short"),
        ("Authorization: Bearer abc.def-ghi", "Authorization: Bearer [REDACTED]"),
        ('{"auth": "bearer xyz123"}', '{"auth": "bearer [REDACTED]"}'),
        ("Bearer sk-abcdef123456", "Bearer [REDACTED]"),
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


def test_redact_is_idempotent():
    once = redact("Bearer sk-abcdef123456 ek_abcdefghijklmnop", ["alice"])
    assert redact(once, ["alice"]) == once


def test_clean_text_replaces_line_breaks_and_control_characters():
    assert clean_text("a\r\nb\tc\x00d\x1be\u2028f") == "a  b c d e f"


def test_clean_text_truncates_with_an_ellipsis():
    assert clean_text("x" * 10, limit=10) == "x" * 10
    assert clean_text("x" * 11, limit=10) == "x" * 9 + "…"
    assert len(clean_text("y" * 5000)) == 2048


def test_clean_text_redacts_before_truncating():
    # Cut first, "sk-abc" would be too short for the pattern and its start would leak.
    assert clean_text("sk-abcdefghijkl", limit=7) == "sk-[RE…"
    assert clean_text("pw=p4ss", secrets=["p4ss"]) == "pw=[REDACTED]"
