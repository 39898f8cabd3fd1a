"""Reading the PEM file a setting names (the JWT signing key, the Pub/Sub CA certificates),
with an error that names the file and says how to fix the setting."""

from __future__ import annotations

import os
from pathlib import Path


def read_pem_file(path: str | os.PathLike[str], what: str, fix: str) -> bytes:
    """The bytes of ``path``, or ``ValueError("cannot read <what>: <reason>; <fix>")``."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {what}: {exc.strerror}; {fix}") from exc
