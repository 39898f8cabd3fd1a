"""TLS material of the sandbox org: a private CA and a loopback server certificate it signs.

A real org is reached over TLS only, and every third-party Pub/Sub client hard-codes it, so
``sandbox serve --tls`` serves both gRPC and REST with a server certificate for
``localhost`` / ``127.0.0.1`` signed by a CA generated into the data directory. Clients
trust that CA file (``KPI_PUBSUB_CA_FILE`` for ours, ``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH``
or ``NODE_EXTRA_CA_CERTS`` for others), never an insecure mode.

Files are reused while they are valid for another day and the certificate still chains to
the CA beside it, so a client that trusted the CA once keeps working across restarts.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

import requests
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_FILE = "sandbox_ca.pem"
CERT_FILE = "sandbox_tls_cert.pem"
KEY_FILE = "sandbox_tls_key.pem"
SERVER_NAMES = ("localhost",)
SERVER_IPS = ("127.0.0.1", "::1")
_VALID_DAYS = 365
_RENEW_BEFORE = dt.timedelta(days=1)


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files: the CA clients trust, and the server's certificate and private key."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    def server_key_and_chain(self) -> tuple[bytes, bytes]:
        """(private key PEM, certificate chain PEM) as gRPC and ssl want them."""
        return self.key_file.read_bytes(), self.cert_file.read_bytes()


class _PinnedCaAdapter(requests.adapters.HTTPAdapter):
    """Verifies every HTTPS request against one CA file.

    ``Session.verify`` alone is not enough: requests lets ``REQUESTS_CA_BUNDLE`` /
    ``CURL_CA_BUNDLE`` from the environment override it (psf/requests#3829), and many
    machines set those to the system bundle, which does not hold the sandbox's CA."""

    def __init__(self, ca_file: str) -> None:
        super().__init__()
        self._ca_file = ca_file

    def send(self, request, *args, **kwargs):  # type: ignore[no-untyped-def]
        kwargs["verify"] = self._ca_file
        return super().send(request, *args, **kwargs)


def ca_pinned_session(ca_file: str | os.PathLike[str]) -> requests.Session:
    """A requests session whose HTTPS requests trust exactly the CA(s) in ``ca_file``."""
    session = requests.Session()
    session.mount("https://", _PinnedCaAdapter(str(ca_file)))
    return session


def ensure_tls_files(directory: str | os.PathLike[str]) -> TlsFiles:
    """The CA and server certificate in ``directory``, generated when missing or stale."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(root / CA_FILE, root / CERT_FILE, root / KEY_FILE)
    if not _usable(files):
        _generate(files)
    return files


def _usable(files: TlsFiles) -> bool:
    try:
        ca = x509.load_pem_x509_certificate(files.ca_file.read_bytes())
        cert = x509.load_pem_x509_certificate(files.cert_file.read_bytes())
        key = serialization.load_pem_private_key(files.key_file.read_bytes(), password=None)
    except (OSError, ValueError):
        return False
    limit = dt.datetime.now(dt.UTC) + _RENEW_BEFORE
    if min(ca.not_valid_after_utc, cert.not_valid_after_utc) < limit:
        return False
    if key.public_key().public_numbers() != cert.public_key().public_numbers():
        return False
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kpi_pipeline sandbox org"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def certificate_builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: CertificatePublicKeyTypes,
    not_before: dt.datetime,
    not_after: dt.datetime,
) -> x509.CertificateBuilder:
    """A certificate of ``subject`` for ``public_key``, valid from ``not_before`` to
    ``not_after``, with a random serial; the caller adds extensions and signs it as
    ``issuer`` (the same name makes it self-signed)."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )


def _generate(files: TlsFiles) -> None:
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)  # tolerate small clock skew
    until = now + dt.timedelta(days=_VALID_DAYS)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("kpi_pipeline sandbox CA")
    ca = (
        certificate_builder(ca_name, ca_name, ca_key.public_key(), now, until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[x509.GeneralName] = [x509.DNSName(n) for n in SERVER_NAMES]
    alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in SERVER_IPS]
    cert = (
        certificate_builder(_name("localhost"), ca_name, server_key.public_key(), now, until)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = server_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write(files.key_file, key_pem, mode=0o600)
    _write(files.cert_file, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    # The CA's private key is never written: nothing else is ever signed with it.
    _write(files.ca_file, ca.public_bytes(serialization.Encoding.PEM), mode=0o644)


def _write(path: Path, data: bytes, *, mode: int) -> None:
    """Atomic replace, so a concurrent reader never sees half a PEM."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)
