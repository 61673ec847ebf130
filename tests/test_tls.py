"""TLS from ``tls_cert``/``tls_key``: a real HTTPS listener with a self-signed certificate made
in the test (the ``cryptography`` package), HSTS on its answers, plain HTTP refused, and one-line
errors for certificates that cannot be used."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from avatar.config import ConfigError, load_settings
from avatar.server.app import create_app
from avatar.server.engines import Engines
from avatar.server.security import ssl_context
from tests.conftest import API_TOKEN, make_settings


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for localhost / 127.0.0.1 and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_https_listener(engines: Engines, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    settings = make_settings(tmp_path, tls_cert=cert, tls_key=key)
    tls = ssl_context(settings)
    assert tls is not None and tls.minimum_version == ssl.TLSVersion.TLSv1_2
    runner = web.AppRunner(create_app(settings, engines=engines))
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=tls)
    await site.start()
    try:
        trust = ssl.create_default_context(cafile=str(cert))
        async with aiohttp.ClientSession() as http:
            async with http.get(f"https://localhost:{port}/healthz", ssl=trust) as resp:
                assert resp.status == 200 and (await resp.json())["status"] == "ok"
                assert resp.headers["Strict-Transport-Security"].startswith("max-age=")
                assert "Content-Security-Policy" in resp.headers
            headers = {"Authorization": f"Bearer {API_TOKEN}"}
            async with http.get(f"https://127.0.0.1:{port}/metrics", ssl=trust, headers=headers) as resp:
                assert resp.status == 200 and "avatar_sessions" in await resp.text()
            # A client that does not trust the certificate is refused by its own TLS check ...
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await http.get(f"https://localhost:{port}/healthz")
            # ... and plain HTTP on the TLS port gets no answer.
            with pytest.raises(aiohttp.ClientError):
                await http.get(f"http://127.0.0.1:{port}/healthz")
    finally:
        await runner.cleanup()


def test_certificate_settings_name_the_key(tmp_path: Path) -> None:
    cert, _ = self_signed(tmp_path)
    with pytest.raises(ConfigError, match="tls_key"):
        load_settings(env={}, overrides={"tls_cert": cert})
    with pytest.raises(ConfigError, match="tls_cert"):
        load_settings(env={"AVATAR_TLS_CERT": str(tmp_path / "missing.pem"), "AVATAR_TLS_KEY": str(cert)})


def test_serve_with_an_unusable_certificate_is_one_line(tmp_path: Path, capsys: Any) -> None:
    from avatar.cli import main

    _, key = self_signed(tmp_path)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n", encoding="utf-8")
    config = tmp_path / "avatar.toml"
    config.write_text(
        f'[security]\ntls_cert = "{garbage}"\ntls_key = "{key}"\n[server]\ndata_dir = "{tmp_path / "data"}"\n',
        encoding="utf-8",
    )
    assert main(["serve", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tls_cert" in err[0]
