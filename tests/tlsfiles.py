"""Certificates for TLS tests, made with ``trustme``: a CA, a server certificate for
127.0.0.1 and localhost, a client certificate, and a second CA that signed nothing the
broker has (for verification failures)."""
from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme

from client import tls_context


@dataclass(frozen=True)
class Pki:
    """PEM files in one directory."""

    ca: Path
    cert: Path  # the server's chain
    key: Path
    client_cert: Path  # a client's certificate and key, one file
    other_ca: Path
    other_client_cert: Path  # signed by other_ca

    def client(self, *, cert: bool = False) -> ssl.SSLContext:
        """A client context trusting ``ca``, with the client certificate if ``cert``."""
        return tls_context(ca=self.ca, cert=self.client_cert if cert else None)

    def broker_args(self, *, client_ca: bool = False) -> tuple[str, ...]:
        args = ("--tls-cert", str(self.cert), "--tls-key", str(self.key))
        return args + (("--tls-client-ca", str(self.ca)) if client_ca else ())


def make_pki(where: Path) -> Pki:
    where.mkdir(parents=True, exist_ok=True)
    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.private_key_pem.write_to_path(str(where / "server.key"))
    (where / "server.pem").write_bytes(b"".join(p.bytes() for p in server.cert_chain_pems))
    ca.cert_pem.write_to_path(str(where / "ca.pem"))
    other.cert_pem.write_to_path(str(where / "other-ca.pem"))
    for name, issuer in (("client.pem", ca), ("other-client.pem", other)):
        client = issuer.issue_cert("worker-7@example.com", common_name="worker-7")
        client.private_key_and_cert_chain_pem.write_to_path(str(where / name))
    return Pki(ca=where / "ca.pem", cert=where / "server.pem", key=where / "server.key",
               client_cert=where / "client.pem", other_ca=where / "other-ca.pem",
               other_client_cert=where / "other-client.pem")
