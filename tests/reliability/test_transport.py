"""TLS on the server itself: certificate and key from settings, TLS 1.2+ only, plain HTTP refused."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import ssl
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.server import ServerProcess


def _write_test_pki(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1, as PEM files."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "phiserve test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / "ca.pem", folder / "server.pem", folder / "server-key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    paths[2].chmod(0o600)
    return paths


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, built_home: Path):
    home = tmp_path_factory.mktemp("tls-home")
    shutil.copytree(built_home, home, dirs_exist_ok=True)
    ca, cert, key = _write_test_pki(home)
    with ServerProcess(
        home, PHISERVE_TLS_CERT_FILE=str(cert), PHISERVE_TLS_KEY_FILE=str(key)
    ) as server:
        yield server, ca


def test_https_inference_with_the_test_ca(tls_server) -> None:
    server, ca = tls_server
    assert server.url.startswith("https://")
    context = ssl.create_default_context(cafile=str(ca))
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 30], "data": [0.2] * 30}]}
    response = httpx.post(
        f"{server.url}/v2/models/breast-cancer/infer",
        json=body,
        headers=server.auth,
        verify=context,
    )
    assert response.status_code == 200
    assert response.extensions["http_version"] == b"HTTP/1.1"


def test_tls_below_1_2_is_refused(tls_server) -> None:
    server, ca = tls_server
    context = ssl.create_default_context(cafile=str(ca))
    context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/v2/health/live", verify=context)


def test_plain_http_is_refused(tls_server) -> None:
    server, _ = tls_server
    plain = server.url.replace("https://", "http://")
    try:
        response = httpx.get(f"{plain}/v2/health/live", timeout=5)
    except httpx.HTTPError:
        return  # the TLS listener closed the plain connection
    # Some servers answer a plain request on a TLS port with a bare 400; never with the data.
    assert response.status_code == 400
    assert "live" not in response.text


def test_untrusted_certificate_is_refused(tls_server) -> None:
    server, _ = tls_server
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/v2/health/live")
