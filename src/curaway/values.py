"""Small value parsers shared by every layer (query strings, task payloads, connection URLs)."""

from __future__ import annotations

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})


def parse_bool(value: object) -> bool | None:
    """``True``/``False`` for a boolean, 0/1 or one of the words above (any case); ``None`` when it is none of
    them — the caller raises its own error naming the field."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    return None
