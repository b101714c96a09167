"""The wheel carries everything an installed salvage needs: built from a copy of the
source tree, installed into a fresh venv (not editable; only the heavy dependencies,
torch and Ray, are borrowed from the test's own environment), run from outside the
checkout, `salvage cluster up --prometheus` renders the shipped templates it
carries, and its Prometheus scrapes the head."""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import pytest

from workers.raynode import free_ports

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
    return proc


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A venv holding salvage from its wheel, and no salvage checkout on its path."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"
    shutil.copytree(REPO, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "*.egg-info", "__pycache__", ".pytest_cache"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", str(root / "dist"), str(source)], timeout=300)
    (wheel,) = (root / "dist").glob("salvage_cluster-*.whl")
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], timeout=120)
    _run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q", "--no-deps",
          "--no-index", str(wheel)], timeout=300)
    site = Path(_run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                     cwd=root).stdout.strip())
    # The dependencies, from this environment; a plain path, so its editable salvage stays out.
    (site / "zz_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    ray = venv / "bin" / "ray"  # what pip makes for Ray's console script
    ray.write_text(f"#!{venv / 'bin' / 'python'}\nimport sys\nfrom ray.scripts.scripts import main\nsys.exit(main())\n")
    ray.chmod(0o755)
    return venv


def _env(venv: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("SALVAGE_")}
    env.update(PATH=f"{venv / 'bin'}:{env['PATH']}", RAY_USAGE_STATS_ENABLED="0",
               SALVAGE_RAY_OBJECT_STORE_BYTES=str(80 * 2**20))
    return env


def test_the_installed_salvage_comes_from_the_wheel_with_its_templates(venv, tmp_path):
    out = _run([str(venv / "bin" / "python"), "-c",
                "import cluster, dashboards, workers; from cluster.head import templates; "
                "print(cluster.__file__, dashboards.__file__, workers.__file__, templates.DEPLOY, "
                "templates.DASHBOARDS_JSON)"], cwd=tmp_path, env=_env(venv)).stdout.split()
    for path in out:
        assert Path(path).is_relative_to(venv) and Path(path).exists(), path
    assert not Path(out[3]).is_symlink()  # the wheel holds the files themselves
    version = _run([str(venv / "bin" / "salvage"), "--version"], cwd=tmp_path, env=_env(venv)).stdout
    assert version.startswith("salvage ")


def test_cluster_up_with_prometheus_from_the_wheel_scrapes_the_head(venv, tmp_path):
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus not installed (apt-get install prometheus)")
    salvage = str(venv / "bin" / "salvage")
    state = tmp_path / "state"
    ray_port, http_port, prom_port = free_ports(3)
    env = _env(venv)
    try:
        out = _run([salvage, "cluster", "up", "--state-dir", str(state), "--port", str(ray_port), "--http-port",
                    str(http_port), "--prometheus", "--prometheus-port", str(prom_port)],
                   cwd=tmp_path, env=env, timeout=300).stdout
        assert f"Prometheus on http://127.0.0.2:{prom_port}" in out
        coordinator = _cmdline(int((state / "coordinator.pid").read_text()))
        assert coordinator[0].startswith(str(venv)), coordinator  # the head runs the installed salvage
        config = (state / "prometheus" / "prometheus.yml").read_text()
        assert f"127.0.0.2:{http_port}" in config and "127.0.0.2:8470" not in config
        datasource = (state / "grafana" / "provisioning" / "datasources" / "salvage.yml").read_text()
        assert f"url: http://127.0.0.2:{prom_port}" in datasource
        dashboards = (state / "grafana" / "provisioning" / "dashboards" / "salvage.yml").read_text()
        assert f"path: {venv}" in dashboards

        def head_scraped() -> bool:
            url = f"http://127.0.0.2:{prom_port}/api/v1/targets"
            try:
                targets = json.loads(urllib.request.urlopen(url, timeout=5).read())["data"]["activeTargets"]
            except OSError:
                return False
            return any(t["labels"]["job"] == "salvage-head" and t["health"] == "up" and
                       t["scrapeUrl"] == f"http://127.0.0.2:{http_port}/metrics" for t in targets)

        deadline = time.monotonic() + 90
        while not head_scraped():
            assert time.monotonic() < deadline, "Prometheus never scraped the head"
            time.sleep(1)
    finally:
        down = subprocess.run([salvage, "cluster", "down", "--state-dir", str(state)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=180, check=False)
    assert down.returncode == 0 and "stopped" in down.stdout, down.stdout + down.stderr


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
