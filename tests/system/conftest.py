import pytest
import ray
from localcluster import LocalCluster


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory):
    """One loopback cluster per test module: a Ray node costs seconds and RAM."""
    cluster = LocalCluster(tmp_path_factory.mktemp("state"))
    cluster.up()
    yield cluster
    cluster.down()


@pytest.fixture(scope="module")
def ray_here():
    """A one-node Ray of the module's own on loopback, this process its driver."""
    # address="local": a Ray of its own, never one a cluster hint in /tmp/ray points at.
    # Auth off, said outright: a new local Ray otherwise writes ~/.ray/auth_token, and
    # every later Ray on this machine with no mode set would take it up.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_USAGE_STATS_ENABLED", "0")
        env.setenv("RAY_AUTH_MODE", "disabled")
        ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.2",
                 object_store_memory=80 * 2**20, log_to_driver=False)
        yield
        ray.shutdown()
