"""This PC's Ray node certificate, for Ray's mutual TLS with a head on the LAN.

The key is made here and never leaves the PC; the head's CA signs its public half
for the one address the node serves on (cluster/head/raytls.py). Both files are
the PC owner's alone (0600), made afresh at every join: nothing to renew.
"""
from __future__ import annotations

import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .headclient import HeadClient, HeadError
from .privatefile import write_private
from .raynode import ray_tls_env


def node_tls_env(head: HeadClient, ip: str, ca_file: Path, directory: Path, name: str) -> dict[str, str]:
    """The environment that puts this PC's Ray node (and its workers) on TLS."""
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    reply = head.post("/api/tls/ray-node", {"ip": ip, "public_key": public.decode()})
    try:
        cert = x509.load_pem_x509_certificate(str(reply.get("cert", "")).encode())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        raise HeadError(502, "tls: the head's answer holds no Ray node certificate") from None
    if ipaddress.ip_address(ip) not in names.get_values_for_type(x509.IPAddress):
        raise HeadError(502, f"tls: the head signed a Ray node certificate that is not for {ip}")
    key_file, cert_file = directory / f"{name}-ray.key", directory / f"{name}-ray.pem"
    write_private(key_file, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    write_private(cert_file, cert.public_bytes(serialization.Encoding.PEM))
    return ray_tls_env(ca_file, cert_file, key_file)


