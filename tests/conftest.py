import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from localcluster import LocalCluster  # noqa: E402


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory):
    """One loopback cluster per test module: a Ray node costs seconds and RAM."""
    cluster = LocalCluster(tmp_path_factory.mktemp("state"))
    cluster.up()
    yield cluster
    cluster.down()
