"""Canonical JSON text: sorted keys, no spaces, so equal documents give equal text and hashes
(stored states and decisions, and the flywheel messages whose hash is a decision's id).

Both forms are defined as the standard library writes them (``json.dumps`` with
``sort_keys=True, separators=(",", ":")``), because record ids hash this text and must not
change between versions. orjson writes the same text about eight times faster for almost
every value, so it is used whenever it provably agrees (``_orjson_agrees``): plain
``dict``/``list``/``tuple`` of ``str``/``int``/``bool``/``None`` and floats that ``repr``
writes without an exponent. Anything else (NaN and the infinities, floats below 1e-4, which
orjson writes ``0.00001`` where ``repr`` writes ``1e-05``, subclasses, non-string keys,
other types) takes the standard library, so the text is the same either way
(``kpi_pipeline_tests/core/test_canonical.py`` checks it with hypothesis).
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_SMALLEST_PLAIN_FLOAT = 1e-4  # below it (but not 0) repr switches to an exponent
_LARGEST_PLAIN_FLOAT = 1e16  # from it up repr switches to an exponent too
_EXACT_SCALARS = frozenset({str, int, bool, type(None)})


def dumps(value: Any) -> str:
    """ASCII canonical JSON; a value JSON cannot hold is written as its ``str()``."""
    text = _by_orjson(value)
    if text is not None and text.isascii():  # the standard library escapes non-ASCII here
        return text.decode()
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def canonical_json(value: object) -> str:
    """UTF-8 canonical JSON (non-ASCII characters as themselves): the flywheel's record text."""
    text = _by_orjson(value)
    if text is not None:
        return text.decode()
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_value(value: Any) -> Any:
    """``value`` as its canonical text reads back (``json.loads(dumps(value))``): JSON types
    only, keys in sorted order, so a stored document never depends on dict order. Where
    orjson wrote the text it reads it back too (its own output is in its integer range)."""
    text = _by_orjson(value)
    if text is not None:
        return orjson.loads(text)
    return json.loads(dumps(value))


def _by_orjson(value: Any) -> bytes | None:
    """orjson's text where it is the standard library's too, else None (the caller then
    takes the standard library, which also gives its own error for what JSON cannot hold:
    integers beyond 64 bits, lone surrogates, cycles, nesting too deep)."""
    try:
        if _orjson_agrees(value):
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except (orjson.JSONEncodeError, RecursionError):
        pass
    return None


def _orjson_agrees(value: Any) -> bool:
    """True when orjson writes ``value`` exactly as the standard library does."""
    kind = type(value)
    if kind in _EXACT_SCALARS:
        return True
    if kind is float:
        magnitude = abs(value)
        return value == 0.0 or _SMALLEST_PLAIN_FLOAT <= magnitude < _LARGEST_PLAIN_FLOAT
    if kind is dict:
        return all(type(key) is str and _orjson_agrees(item) for key, item in value.items())
    if kind is list or kind is tuple:
        return all(_orjson_agrees(item) for item in value)
    return False
