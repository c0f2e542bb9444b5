"""Property tests of the sanitiser of upstream error text (redaction.py), with hypothesis.

Whatever the upstream sends, what is stored or logged is one line, within its cap, with nothing
key-like left: no sk-… key, no ek_… client secret, no Bearer token, not the configured key.
"""

import re
import string

from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from redaction import REDACTED, clean_text, redact

# Deterministic and bounded: the same examples every run, a fraction of a second each.
PROPERTY = settings(max_examples=300, derandomize=True, deadline=None)

KEY_CHARACTERS = string.ascii_letters + string.digits
# What is left of a key-like token that the sanitiser missed (its own shapes: see redaction.py).
LEFT_OVER = (
    re.compile(r"sk-[A-Za-z0-9_*.\-]{5,}[A-Za-z0-9_*\-]"),
    re.compile(r"ek_[A-Za-z0-9_]{10,}"),
    # A token's first character, other than the start of "[REDACTED]" or the cap's "…".
    re.compile(r"(?i)\bbearer\s+[^\s\"'<>,;\[…]"),
)
# Characters that break or forge a log line: C0 and C1 controls, and Unicode line separators.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")

api_keys = st.text(KEY_CHARACTERS + "_-", min_size=20, max_size=60).map(lambda s: f"sk-proj-{s}")
client_secrets = st.text(KEY_CHARACTERS + "_", min_size=10, max_size=60).map(lambda s: f"ek_{s}")
bearer_tokens = st.builds(
    lambda word, space, token: f"{word}{space}{token}",
    st.sampled_from(["Bearer", "bearer", "BEARER"]),
    st.text(" \t\r\n\x0b\x0c\x85\xa0\u2028\x00\x01\x1b\x7f\x9b", min_size=1, max_size=3),
    st.text(KEY_CHARACTERS + "._-~+/=", min_size=1, max_size=40),
)
key_like = st.one_of(api_keys, client_secrets, bearer_tokens)
# Around them: any unicode at all, control characters and surrogates included.
noise = st.text(st.characters(codec=None), max_size=40)
limits = st.integers(min_value=0, max_value=300)


def left_over(text: str) -> list[str]:
    return [match.group() for pattern in LEFT_OVER for match in pattern.finditer(text)]


@PROPERTY
@given(text=st.text(st.characters(codec=None)), limit=limits, secret=st.text(max_size=30))
def test_clean_text_never_crashes_never_breaks_a_line_and_keeps_to_its_cap(text, limit, secret):
    cleaned = clean_text(text, limit=limit, secrets=[secret])
    assert len(cleaned) <= limit
    assert not CONTROL.search(cleaned)
    assert len(cleaned.splitlines()) <= 1


@PROPERTY
@given(before=noise, token=key_like, after=noise, limit=limits)
@example(before="", token="Bearer\x01abcdef", after="", limit=100)
def test_no_key_like_token_survives_whatever_surrounds_it(before, token, after, limit):
    cleaned = clean_text(before + token + after, limit=limit)
    assert left_over(cleaned) == []


@PROPERTY
@given(before=noise, key=api_keys, after=noise, limit=limits)
def test_the_configured_key_never_survives_not_even_in_part(before, key, after, limit):
    cleaned = clean_text(before + key + after, limit=limit, secrets=[key])
    assert key not in cleaned
    # Nor a piece of it, cut by the cap: redaction runs before truncation.
    body = key.removeprefix("sk-proj-")
    for start in range(len(body) - 7):
        piece = body[start : start + 8]
        assume(piece not in before + after)
        assert piece not in cleaned


@PROPERTY
@given(text=st.text(st.characters(codec=None)), secret=st.text(KEY_CHARACTERS, min_size=8))
def test_redaction_is_idempotent_and_removes_the_configured_secret(text, secret):
    assume(secret not in REDACTED)
    once = redact(text + secret, [secret])
    assert secret not in once
    assert redact(once, [secret]) == once
