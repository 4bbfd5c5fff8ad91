"""A throwaway certificate for a TLS broker on 127.0.0.1 (``tools.bench --tls``,
``tools.fuzz --tls``), made with trustme (the ``bench`` extra)."""
from __future__ import annotations

import ssl
from pathlib import Path


def throwaway_tls(where: Path) -> tuple[tuple[str, ...], ssl.SSLContext]:
    """brokerd's TLS flags for a certificate of a fresh CA for 127.0.0.1, written to
    ``where``, and a client context trusting that CA. Raises ImportError without trustme."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    (where / "tls-cert.pem").write_bytes(b"".join(p.bytes() for p in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(where / "tls-key.pem"))
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return ("--tls-cert", str(where / "tls-cert.pem"), "--tls-key", str(where / "tls-key.pem")), client
