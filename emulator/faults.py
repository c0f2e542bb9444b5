"""Faults the emulator can be told to inject: their checks and the shorthand script parser."""

from __future__ import annotations

import json
import os

GARBAGE_BODY = b'<html><body>upstream sent something that is not JSON {"id": "cksess_'
SHORTHAND_HELP = "ok, hangup, hang, garbage, slow:MS, STATUS or STATUS:RETRY_AFTER (e.g. 429:1)"

_FAULT_KEYS = frozenset(
    "ok status retry_after body content_type latency_ms hangup garbage hang message type code "
    "headers".split()
)
_FLAG_FAULTS = frozenset({"ok", "hangup", "garbage", "hang"})


# ---------------------------------------------------------------------------- faults


def _normalise_fault(fault: dict | str) -> dict:
    if isinstance(fault, str):
        return _parse_token(fault)
    if not isinstance(fault, dict):
        raise ValueError(f"A fault is a dict or a shorthand string, not {fault!r}.")
    unknown = set(fault) - _FAULT_KEYS
    if unknown:
        raise ValueError(f"Unknown fault keys {sorted(unknown)}; known: {sorted(_FAULT_KEYS)}.")
    status = fault.get("status")
    if status is not None and (
        isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599
    ):
        raise ValueError(f"Fault status must be an HTTP status code, not {status!r}.")
    for key in ("latency_ms", "retry_after"):
        value = fault.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or value < 0
        ):
            raise ValueError(f"Fault {key} must be a number >= 0, not {value!r}.")
    if "body" in fault and not isinstance(fault["body"], str):
        raise ValueError("Fault body must be a string (the raw response body).")
    if "headers" in fault and not isinstance(fault["headers"], dict):
        raise ValueError("Fault headers must be an object of header names to values.")
    return dict(fault)


def _parse_token(token: str) -> dict:
    token = token.strip().lower()
    if token in _FLAG_FAULTS:
        return {token: True}
    name, _, argument = token.partition(":")
    try:
        if name == "slow" and argument:
            return _normalise_fault({"latency_ms": int(argument)})
        if name.isdigit():
            fault = {"status": int(name)}
            if argument:
                fault["retry_after"] = int(argument)
            return _normalise_fault(fault)
    except ValueError as exc:
        raise ValueError(f"Bad fault {token!r}: {exc}") from None
    raise ValueError(f"Unknown fault {token!r}; use {SHORTHAND_HELP}.")


def parse_script(value: str) -> list[dict]:
    """Faults from a JSON file (a list of fault objects or shorthand strings), an inline JSON list,
    or an inline shorthand such as "500,500,ok,hangup,garbage,hang,429:1,slow:3000"."""
    text = value.strip()
    if not text:
        return []
    if text.startswith("[") or text.endswith(".json") or os.path.isfile(text):
        try:
            if text.startswith("["):
                items = json.loads(text)
            else:
                with open(text, encoding="utf-8") as handle:
                    items = json.load(handle)
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"Cannot read the fault script {text!r}: {exc}") from None
        if not isinstance(items, list):
            raise ValueError("A fault script file must hold a JSON list.")
    else:
        items = [token for token in text.split(",") if token.strip()]
    return [_normalise_fault(item) for item in items]
