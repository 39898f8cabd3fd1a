"""Canonical JSON text: sorted keys, no spaces, so equal documents give equal text and hashes
(stored states and decisions, and the flywheel messages whose hash is a decision's id)."""

from __future__ import annotations

import json
from typing import Any


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
