"""The sandbox's connected app: who may use the JWT bearer flow, and with which key."""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


@dataclass(frozen=True)
class ConnectedApp:
    """The sandbox's connected app: who may use the JWT flow and with which certificate.

    ``allowed_usernames`` are the pre-authorized users; a mapping gives their user ids, a plain
    collection gets stable derived ids. ``login_audiences`` are accepted as JWT ``aud`` beside
    the server's own URL.
    """

    consumer_key: str
    certificate_pem: str | bytes | None = None
    public_key_pem: str | bytes | None = None
    allowed_usernames: Mapping[str, str] | Collection[str] = ()
    login_audiences: tuple[str, ...] = ()

    def public_key(self) -> rsa.RSAPublicKey:
        if (self.certificate_pem is None) == (self.public_key_pem is None):
            raise ValueError("ConnectedApp needs exactly one of certificate_pem or public_key_pem")
        if self.certificate_pem is not None:
            data = _as_bytes(self.certificate_pem)
            try:
                key = x509.load_pem_x509_certificate(data).public_key()
            except ValueError:
                raise ValueError(
                    "ConnectedApp.certificate_pem is not a PEM X.509 certificate"
                ) from None
        else:
            try:
                key = serialization.load_pem_public_key(_as_bytes(self.public_key_pem or b""))
            except ValueError:
                raise ValueError("ConnectedApp.public_key_pem is not a PEM public key") from None
        if not isinstance(key, rsa.RSAPublicKey):
            raise ValueError("the connected app's certificate must hold an RSA key (JWT RS256)")
        return key

    def user_id_for(self, username: str) -> str | None:
        if isinstance(self.allowed_usernames, Mapping):
            return self.allowed_usernames.get(username)
        if username not in self.allowed_usernames:
            return None
        return derived_user_id(username)


def derived_user_id(username: str) -> str:
    """A stable 18-character User id for a username."""
    digest = hashlib.sha1(username.encode()).hexdigest()[:12].upper()
    return f"005{digest}AAA"


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value
