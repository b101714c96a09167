"""The head's HTTP server fails closed, on a real socket (no cluster): every route
needs the token unless it is open; a bad, non-ASCII or missing token is a 401;
bad lengths are 400/413 the client can read; idle and half-sent connections are
dropped and bounded, so the head keeps answering; TLS with the head's own CA."""
import http.client
import json
import socket
import threading
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cluster.head import http as head_http
from cluster.head import raytls, tls
from cluster.head.http import Route, serve
from workers.headclient import HeadClient, HeadError, HeadUnreachable, fetch_ca, fingerprint
from workers.raynode import free_ports
from workers.raytls import node_tls_env

TOKEN = "t" * 64
HOST = "127.0.0.2"


def routes(stored: list):
    def submit(body):
        stored.append(body)
        return {"ok": True}

    return {
        ("GET", "/api/health"): Route(lambda _b: {"ok": True}, open=True),
        ("GET", "/metrics"): Route(lambda _q: (b"up 1\n", "text/plain"), kind="page", open=True),
        ("POST", "/api/submit"): Route(submit),
        ("GET", "/api/secret"): Route(lambda _b: {"secret": 42}),
    }


@pytest.fixture
def head(monkeypatch):
    monkeypatch.setattr(head_http.Handler, "timeout", 1.0)
    monkeypatch.setattr(head_http, "READ_TIMEOUT_S", 1.0)
    monkeypatch.setattr(head_http, "MAX_CONNECTIONS", 8)
    stored = []
    (port,) = free_ports(1, HOST)
    server = serve(routes(stored), HOST, port, TOKEN, log=lambda line: None)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield port, stored
    server.shutdown()
    server.server_close()


def raw(port: int, data: bytes, read: bool = True) -> bytes:
    with socket.create_connection((HOST, port), timeout=5) as s:
        s.sendall(data)
        if not read:
            return b""
        s.shutdown(socket.SHUT_WR)  # all sent: a body shorter than announced ends here
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


@pytest.mark.parametrize("auth", [None, "Bearer wrong", "Bearer " + "t" * 63, "Bearer ünïcödé", "Basic x", "Bearer "])
def test_a_missing_wrong_or_non_ascii_token_is_a_401_on_every_closed_route(head, auth):
    port, stored = head
    header = b"" if auth is None else b"Authorization: " + auth.encode("latin-1") + b"\r\n"
    for request in (b"GET /api/secret", b"POST /api/submit", b"GET /no/such/path", b"POST /api/health"):
        reply = raw(port, request + b" HTTP/1.1\r\nHost: x\r\n" + header + b"Content-Length: 2\r\n\r\n{}")
        assert status(reply) == 401, (request, reply[:200])
    assert stored == []
    assert status(raw(port, b"GET /api/health HTTP/1.1\r\n" + header + b"\r\n")) == 200
    assert status(raw(port, b"GET /metrics HTTP/1.1\r\n" + header + b"\r\n")) == 200


def test_the_right_token_opens_the_routes_and_unknown_paths_say_404(head):
    port, stored = head
    client = HeadClient(HOST, port, TOKEN)
    assert client.get("/api/secret") == {"secret": 42}
    assert client.post("/api/submit", {"x": 1}) == {"ok": True} and stored == [{"x": 1}]
    with pytest.raises(HeadError) as err:
        client.get("/nope")
    assert err.value.status == 404


@pytest.mark.parametrize("length, want", [(b"-5", 400), (b"abc", 400), (b"99999999999", 413), (b"10", 400)])
def test_bad_lengths_are_answered_not_waited_for(head, length, want):
    port, stored = head
    started = time.monotonic()
    reply = raw(port, b"POST /api/submit HTTP/1.1\r\nAuthorization: Bearer " + TOKEN.encode() +
                b"\r\nContent-Length: " + length + b"\r\n\r\n{}")
    assert status(reply) == want and b'"error"' in reply
    assert time.monotonic() - started < 5 and stored == []


def test_a_body_over_the_limit_gets_a_413_its_client_can_read(head, monkeypatch):
    port, stored = head
    monkeypatch.setattr(head_http, "MAX_BODY", 1000)
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    conn.request("POST", "/api/submit", body=b"x" * 50_000,
                 headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    reply = conn.getresponse()
    assert reply.status == 413 and json.loads(reply.read())["error"].startswith("body: larger than")
    assert stored == []


def test_idle_and_half_sent_connections_are_dropped_and_bounded(head):
    port, _ = head
    idle = []
    for i in range(40):  # many more than the server's 8 slots
        s = socket.create_connection((HOST, port), timeout=5)
        if i % 2:
            s.sendall(b"POST /api/submit HTTP/1.1\r\nContent-Le")  # headers cut off half-way
        idle.append(s)
    time.sleep(0.3)
    threads = threading.active_count()
    assert threads < 8 + 10, threads  # bounded: connections past the cap were turned away
    # The head stays usable: once the stalled ones time out (1 s here), requests pass again.
    deadline = time.monotonic() + 10
    while True:
        try:
            if HeadClient(HOST, port, TOKEN, timeout=3).get("/api/secret") == {"secret": 42}:
                break
        except HeadError as err:
            assert err.status == 503  # busy, said so
        except Exception:
            pass
        assert time.monotonic() < deadline, "the head did not recover from idle sockets"
        time.sleep(0.2)
    for s in idle:
        s.close()


def test_lan_mode_speaks_tls_with_the_heads_own_ca_pinned_by_fingerprint(tmp_path):
    (port,) = free_ports(1, HOST)
    files = tls.ensure(tmp_path / "tls", HOST)
    ca_routes = {("GET", "/api/tls/ca"): Route(lambda _q: (files.ca.read_bytes(), "application/x-pem-file"),
                                             kind="page", open=True),
                 ("GET", "/api/secret"): Route(lambda _b: {"secret": 42})}
    server = serve(ca_routes, HOST, port, TOKEN, log=lambda line: None, tls=files.server_context())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        pin = fingerprint(files.ca.read_text())
        pem = fetch_ca(HOST, port, pin)
        (tmp_path / "ca.pem").write_text(pem)
        assert HeadClient(HOST, port, TOKEN, ca_file=tmp_path / "ca.pem").get("/api/secret") == {"secret": 42}
        with pytest.raises(HeadError, match="^ca-fingerprint:"):
            fetch_ca(HOST, port, "sha256:" + "0" * 64)  # another head, or a man in the middle
        with pytest.raises(HeadUnreachable):  # plain HTTP is not answered
            HeadClient(HOST, port, TOKEN, timeout=3).get("/api/secret")
        other = tls.ensure(tmp_path / "other", HOST)  # a certificate from another CA is not trusted
        with pytest.raises(HeadUnreachable, match="CERTIFICATE_VERIFY_FAILED"):
            HeadClient(HOST, port, TOKEN, ca_file=other.ca).get("/api/secret")
    finally:
        server.shutdown()
        server.server_close()
    # The CA is made once; the server certificate follows the head's address.
    ca, cert = files.ca.read_bytes(), files.cert.read_bytes()
    assert tls.ensure(tmp_path / "tls", HOST).cert.read_bytes() == cert
    moved = tls.ensure(tmp_path / "tls", "127.0.0.3")
    assert moved.ca.read_bytes() == ca and moved.cert.read_bytes() != cert
    assert oct((tmp_path / "tls" / "ca.key").stat().st_mode & 0o777) == "0o600"


def test_the_head_refuses_to_serve_without_a_token():
    with pytest.raises(ValueError, match="^token:"):
        serve({}, HOST, free_ports(1, HOST)[0], "", log=lambda line: None)


def test_a_pc_gets_a_ray_node_certificate_for_its_own_address_and_bad_requests_get_400(tmp_path):
    (port,) = free_ports(1, HOST)
    files = tls.ensure(tmp_path / "tls", HOST)
    server = serve({("POST", "/api/tls/ray-node"): Route(raytls.sign_route(tmp_path / "tls"))}, HOST, port, TOKEN,
                   log=lambda line: None, tls=files.server_context())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        head = HeadClient(HOST, port, TOKEN, ca_file=files.ca)
        env = node_tls_env(head, "127.0.0.7", files.ca, tmp_path, "pc1")
        assert env["RAY_USE_TLS"] == "1" and env["RAY_TLS_CA_CERT"] == str(files.ca)
        cert = x509.load_pem_x509_certificate((tmp_path / "pc1-ray.pem").read_bytes())
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate(files.ca.read_bytes()))
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.7"]
        assert oct((tmp_path / "pc1-ray.key").stat().st_mode & 0o777) == "0o600"
        good_key = x509.load_pem_x509_certificate(files.cert.read_bytes()).public_key()
        pem = good_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        for body, field in (({"ip": "pc1.lan", "public_key": pem}, "ip"), ({"public_key": pem}, "ip"),
                            ({"ip": "127.0.0.7", "public_key": "not a key"}, "public_key"),
                            ({"ip": "127.0.0.7", "public_key": pem * 10}, "public_key")):
            with pytest.raises(HeadError, match=f"^{field}:") as err:
                head.post("/api/tls/ray-node", body)
            assert err.value.status == 400
        with pytest.raises(HeadError) as err:  # no token, no certificate
            HeadClient(HOST, port, "x" * 64, ca_file=files.ca).post("/api/tls/ray-node", {"ip": "127.0.0.7",
                                                                                          "public_key": pem})
        assert err.value.status == 401
    finally:
        server.shutdown()
        server.server_close()
