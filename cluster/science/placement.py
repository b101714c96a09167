"""Which hosts can run which app: hardware needs against host capabilities."""

from __future__ import annotations

from jobs.science.apps.base import Needs

from .states import HostCaps


def host_can_run(needs: Needs, host: HostCaps) -> bool:
    """True when `host` has what an app with `needs` requires.

    A gpu_capable (but not gpu-requiring) app runs anywhere, on CPU if need be.
    """
    if not needs.gpu:
        return True
    if host.cpu_only:
        return False
    return any(
        g.vram_bytes >= needs.min_vram_bytes and g.compute_capability >= needs.min_compute_capability
        for g in host.gpus
    )
