"""HTTPS end to end: the application served by Ray Serve's HTTP proxy with a certificate made here
(self-signed, for 127.0.0.1), called by the Python client trusting only that certificate.

gRPC is not served over TLS by Ray Serve's gRPC proxy (no TLS option); the README says how to put
a TLS-terminating proxy in front of it. Only HTTPS is tested here.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clinie.client import Client, ClinieError
from clinie.schema import NoteResult

pytestmark = pytest.mark.slow

PORT, GRPC_PORT = 18443, 19443
NOTE = "Patient denies chest pain. Takes aspirin 81 mg daily."


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A key and a one-day certificate for 127.0.0.1 (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "clinie-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def tls_service(tiny_model: Path, clinie_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    import os

    from serve_app import local

    os.environ["CLINIE_HOME"] = str(clinie_home)
    cert, key = self_signed(tmp_path_factory.mktemp("tls"))
    cfg, raw = local.local_app_config(fast_tier_model=str(tiny_model), llm_enabled=False, api_keys_env="CLINIE_NO_KEYS")
    svc = local.start(cfg, raw, port=PORT, grpc_port=GRPC_PORT, tls=(str(cert), str(key)))
    try:
        local.wait_ready(svc.http_url, timeout_s=120)
        yield svc, cert
    finally:
        local.stop()


def test_https_with_a_certificate_made_here(tls_service: Any):
    svc, cert = tls_service
    assert svc.http_url == f"https://127.0.0.1:{PORT}"
    with Client(svc.http_url, ca_file=str(cert)) as c:
        result = NoteResult.model_validate(c.extract(NOTE, note_id="t1", policy="fast-only"))
    assert result.note_id == "t1" and result.route.reason == "policy:fast-only"
    result.check_offsets(NOTE)
    # a client that does not trust the certificate is refused by TLS, before any request is read
    with Client(svc.http_url, retries=0) as c, pytest.raises(ClinieError):
        c.extract(NOTE)
    # and plain HTTP on the TLS port gets no answer
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{PORT}/readyz", timeout=10).read()
    ctx = ssl.create_default_context(cafile=str(cert))
    with urllib.request.urlopen(f"https://127.0.0.1:{PORT}/readyz", timeout=10, context=ctx) as r:
        assert r.status == 200
