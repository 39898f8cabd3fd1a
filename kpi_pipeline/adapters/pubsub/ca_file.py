"""The CA certificates a TLS connection to the Pub/Sub server trusts (KPI_PUBSUB_CA_FILE),
read and checked up front so a wrong file fails with its name rather than at every handshake."""

from __future__ import annotations

import os

from cryptography import x509

from kpi_pipeline.adapters.pem_file import read_pem_file


def read_ca_file(path: str | os.PathLike[str]) -> bytes:
    """The PEM CA certificates in ``path``; a clear error naming the file when it is missing
    or holds no certificate (gRPC itself would only fail every handshake later)."""
    data = read_pem_file(
        path,
        f"the CA file {path} (KPI_PUBSUB_CA_FILE)",
        "point it at a PEM file of the CA certificates that sign the Pub/Sub server's certificate",
    )
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ValueError(
            f"the CA file {path} (KPI_PUBSUB_CA_FILE) holds no PEM certificate ({exc}); it "
            "must contain -----BEGIN CERTIFICATE----- blocks"
        ) from exc
    return data
