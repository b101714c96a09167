"""The head's own certificate authority, for its API and Ray's traffic on the LAN.

At the first `cluster up --host`, the head makes a CA (its key never leaves the
state dir) and signs a server certificate for the address it listens on. The
join line carries the CA's SHA-256 fingerprint: an agent fetches the CA once,
checks that fingerprint, and from then on talks to the head over verified TLS,
so the bearer token never crosses the LAN in clear.

Ray's gRPC runs mutual TLS with certificates from the same CA: the head signs
its own Ray node's, and each PC's at its join (cluster/head/raytls.py), for the
one address that node serves on.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from workers.privatefile import write_private

CA_YEARS = 10
SERVER_YEARS = 2
RAY_NODE_YEARS = 2


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert, self.key)
        return context


def ensure(directory: Path, host: str) -> TlsFiles:
    """The CA and a server certificate for `host` in `directory`, made once; the
    server certificate is made again when the head moves to another address or
    it is within a month of expiring."""
    directory.mkdir(mode=0o700, exist_ok=True)
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    ca_key_path = directory / "ca.key"
    if not files.ca.exists() or not ca_key_path.exists():
        ca_key = ec.generate_private_key(ec.SECP256R1())
        write_private(ca_key_path, _key_pem(ca_key))
        write_private(files.ca, _ca_cert(ca_key).public_bytes(serialization.Encoding.PEM))
    if not _fits(files.cert, host):
        key = ec.generate_private_key(ec.SECP256R1())
        write_private(files.key, _key_pem(key))
        write_private(files.cert, _sign(directory, key.public_key(), host, [ExtendedKeyUsageOID.SERVER_AUTH], SERVER_YEARS))
    return files


def ray_head(directory: Path, host: str) -> TlsFiles:
    """The CA and the head's own Ray node certificate for `host`, made once like the API's."""
    files = TlsFiles(ensure(directory, host).ca, directory / "ray-head.pem", directory / "ray-head.key")
    if not _fits(files.cert, host):
        key = ec.generate_private_key(ec.SECP256R1())
        write_private(files.key, _key_pem(key))
        write_private(files.cert, sign_ray_node(directory, key.public_key(), host))
    return files


def sign_ray_node(directory: Path, public_key, ip: str) -> bytes:
    """A certificate (PEM) for a Ray node at `ip`: every Ray process both serves and
    calls with its node's pair, so it is good for server and client auth."""
    return _sign(directory, public_key, ip, [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
                 RAY_NODE_YEARS)


def _sign(directory: Path, public_key, host: str, usages: list, years: int) -> bytes:
    ca_key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), password=None)
    ca = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(host)).issuer_name(ca.subject)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=365 * years))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "salvage"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _ca_cert(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    name = _name("salvage head CA")
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=365 * CA_YEARS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))


def _fits(path: Path, host: str) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    soon = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=30)
    return ipaddress.ip_address(host) in names.get_values_for_type(x509.IPAddress) and cert.not_valid_after_utc > soon


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


