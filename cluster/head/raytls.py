"""Ray's own TLS on the LAN: the head signs each PC's Ray node certificate.

An agent joining a LAN head makes its node's key on the PC (the key never leaves
it), sends the public half with the address its node serves on, and gets back a
certificate from the head's CA; its Ray node then speaks mutual TLS like the
head's. The route takes the cluster's token, the same token that lets a PC join
Ray at all, so a certificate grants nothing a token holder lacks; what it adds is
that no one without one can read or join Ray's traffic on the wire.
"""
from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Callable

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from . import tls
from .http import ApiError

MAX_KEY_PEM = 1000  # an EC P-256 public key is ~180 bytes of PEM


def sign_route(tls_dir: Path) -> Callable[[dict], dict]:
    """POST /api/tls/ray-node {"ip", "public_key"} -> {"cert"}: PEM, for that address only."""

    def handler(body: dict) -> dict:
        ip, pem = body.get("ip"), body.get("public_key")
        if not isinstance(ip, str):
            raise ApiError(400, "ip: expected the address this PC's Ray node serves on")
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise ApiError(400, f"ip: {ip[:60]!r} is not an IP address") from None
        if not isinstance(pem, str) or len(pem) > MAX_KEY_PEM:
            raise ApiError(400, "public_key: expected an EC public key in PEM")
        try:
            key = serialization.load_pem_public_key(pem.encode())
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise ApiError(400, "public_key: not a PEM public key") from None
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.key_size < 256:
            raise ApiError(400, "public_key: expected an EC key of 256 bits or more")
        return {"cert": tls.sign_ray_node(tls_dir, key, ip).decode()}

    return handler
