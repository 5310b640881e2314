"""A small PKI for tests: a CA, a server certificate for 127.0.0.1, a client certificate.

``make_context(folder, server_side)`` is what a user hands rpcgen as ``ssl_context``
(bound with functools.partial, which pickles by reference under every start method).
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def make_pki(
    folder: Path, *, ca_name: str = "rpcgen test CA", ips: tuple[str, ...] = ("127.0.0.1",)
) -> Path:
    """ca.pem, server.pem/server.key (for ``ips`` and localhost), client.pem/client.key
    in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name(ca_name))
        .issuer_name(_name(ca_name))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
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
        .sign(ca_key, hashes.SHA256())
    )
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for role, usage in (
        ("server", ExtendedKeyUsageOID.SERVER_AUTH),
        ("client", ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(f"rpcgen test {role}"))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(
                # Ray's TLS shows the one server certificate as a client too
                x509.ExtendedKeyUsage(
                    list(dict.fromkeys([usage, ExtendedKeyUsageOID.CLIENT_AUTH]))
                ),
                critical=False,
            )
        )
        if role == "server":
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips),
                    ]
                ),
                critical=False,
            )
        cert = builder.sign(ca_key, hashes.SHA256())
        (folder / f"{role}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(folder / f"{role}.key", key)
    return folder


def make_context(folder: str, server_side: bool) -> ssl.SSLContext:
    """Mutual TLS: each side shows its certificate and trusts only the CA in ``folder``."""
    base = Path(folder)
    if server_side:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(base / "server.pem", base / "server.key")
        context.verify_mode = ssl.CERT_REQUIRED  # clients must show a certificate too
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # checks the host name: 127.0.0.1
        context.load_cert_chain(base / "client.pem", base / "client.key")
    context.load_verify_locations(base / "ca.pem")
    return context


def make_context_without_client_cert(folder: str, server_side: bool) -> ssl.SSLContext:
    """A client that trusts the CA but shows no certificate of its own."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(Path(folder) / "ca.pem")
    return context
