"""The JWT flow's signing key: an unencrypted RSA private key from PEM text or a file.
Errors never echo key material."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from kpi_pipeline.adapters.pem_file import read_pem_file


def load_private_key(
    private_key_pem: str | bytes | None = None, private_key_file: str | Path | None = None
) -> rsa.RSAPrivateKey:
    """An RSA private key from PEM text or a PEM file. Errors never echo key material."""
    if (private_key_pem is None) == (private_key_file is None):
        raise ValueError("give exactly one of private_key_pem or private_key_file for the JWT flow")
    source = "private_key_pem"
    if private_key_file is not None:
        source = f"private key file {str(private_key_file)!r}"
        private_key_pem = read_pem_file(
            private_key_file,
            source,
            "set KPI_SALESFORCE_PRIVATE_KEY_FILE to the PEM key matching the connected app's "
            "certificate",
        )
    data = private_key_pem.encode() if isinstance(private_key_pem, str) else private_key_pem
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        # `from None`: the underlying error could quote parts of the input.
        raise ValueError(
            f"{source} is not an unencrypted PEM private key; export it with "
            "`openssl rsa -in key.pem -out key.unencrypted.pem`"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"{source} is not an RSA key; Salesforce's JWT flow needs RS256 (RSA)")
    return key
