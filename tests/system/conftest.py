import pytest
from localcluster import LocalCluster


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory):
    """One loopback cluster per test module: a Ray node costs seconds and RAM."""
    cluster = LocalCluster(tmp_path_factory.mktemp("state"))
    cluster.up()
    yield cluster
    cluster.down()
