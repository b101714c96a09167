"""Ports picked free for a loopback cluster never land on one Ray takes for itself."""
from workers import raynode


def test_free_ports_skip_the_ports_ray_binds_unasked(monkeypatch):
    # Stand-in for Ray's two fixed ports: every even port, so about half the kernel's picks.
    monkeypatch.setattr(raynode, "RAY_OWN_PORTS", frozenset(range(0, 65536, 2)))
    ports = raynode.free_ports(20)
    assert len(set(ports)) == 20 and all(p % 2 for p in ports)


def test_rays_own_metrics_ports_are_excluded_by_default():
    assert {44217, 44227} <= raynode.RAY_OWN_PORTS
