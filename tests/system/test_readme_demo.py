"""The README's first command, end to end, as a new user runs it: a clean copy of
the repository, a fresh venv, `pip install -q torch==2.13.0 -e .`, then `salvage
demo` with a short budget. It must print a text sample, make science units valid,
credit all three PCs (both simulated-GPU PCs and the CPU-only one), and leave
nothing running; Ctrl-C must stop it as cleanly.

Offline and quick: the venv borrows the heavy dependencies (torch, Ray) of the
environment running the tests through a .pth file, as `--system-site-packages`
would from a base interpreter that had them (with Ray's `ray` launcher), so pip
finds torch==2.13.0 already there and installs only salvage, from the copy, with
no index and no build isolation (it builds with the borrowed setuptools)."""
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import psutil
import pytest

from cluster.head.state import StateDir
from cluster.science.store import ScienceStore
from workers.raynode import port_in_use

REPO = Path(__file__).resolve().parents[2]
COPY_SKIPS = shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache",
                                    ".import_linter_cache")
PCS = {"pc-rtx3060", "pc-gtx1060", "pc-office"}  # two with simulated GPUs, one CPU-only


def readme_demo_command() -> str:
    """The first line of the README's first code block (line 9): the demo."""
    lines = (REPO / "README.md").read_text().splitlines()
    command = lines[lines.index("```") + 1]
    assert command.endswith(".venv/bin/salvage demo") and "pip install -q torch==2.13.0 -e ." in command
    return command


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """A clean copy of the working tree and the environment of a new user on this
    machine, with a venv that pip can fill offline."""
    root = tmp_path_factory.mktemp("readme")
    repo = root / "repo"
    shutil.copytree(REPO, repo, ignore=COPY_SKIPS)
    base = Path(sys._base_executable)  # the interpreter the test venv was made from
    subprocess.run([str(base), "-m", "venv", str(repo / ".venv")], check=True, timeout=300)
    site = repo / ".venv" / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    # The venv's own setuptools (if its Python still bundles one) is too old to build an editable
    # wheel; without it pip builds with the borrowed one.
    for pattern in ("setuptools*", "pkg_resources", "_distutils_hack", "distutils-precedence.pth"):
        for old in site.glob(pattern):
            if old.is_dir():
                shutil.rmtree(old)
            else:
                old.unlink()
    (site / "zz-borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # pip writes no launchers for borrowed packages; salvage runs the `ray` beside its interpreter.
    ray = repo / ".venv" / "bin" / "ray"
    ray.write_text(f"#!{repo / '.venv' / 'bin' / 'python'}\nimport sys\nfrom ray.scripts.scripts import main\n"
                   "sys.exit(main())\n")
    ray.chmod(0o755)
    home = root / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SALVAGE_", "PIP_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(HOME=str(home), PATH=f"{base.parent}{os.pathsep}{env['PATH']}", COLUMNS="160",
               PYTHONUNBUFFERED="1", RAY_USAGE_STATS_ENABLED="0",
               PIP_NO_INDEX="1", PIP_NO_BUILD_ISOLATION="0")  # pip reads "0" here as: no build isolation
    return repo, env, home / ".salvage-demo"


def leftovers(state_dir: Path, repo: Path) -> list[str]:
    """Processes of that cluster still alive, and its ports still taken."""
    config = StateDir(state_dir).read_head()
    marks = [str(state_dir), str(repo / ".venv"), f"{config.host}:{config.ray_port}", f"_port={config.ray_port}"]
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or ())
        if any(mark in cmdline for mark in marks) and proc.pid != os.getpid():
            found.append(f"pid {proc.pid}: {cmdline[:160]}")
    ports = [config.ray_port, config.http_port, config.dashboard_port, config.client_port, config.prometheus_port]
    found += [f"port {p} in use" for p in ports if p and port_in_use(config.host, p)]
    return found


def nothing_left(state_dir: Path, repo: Path) -> list[str]:
    deadline = time.monotonic() + 30  # a process that has exited may linger a moment as its parent reaps it
    while (found := leftovers(state_dir, repo)) and time.monotonic() < deadline:
        time.sleep(1)
    return found


@pytest.mark.timeout(1500)
def test_the_readme_first_command_runs_the_demo_end_to_end(fresh):
    repo, env, state_dir = fresh
    run = subprocess.run(["bash", "-c", readme_demo_command() + " --minutes 1"], cwd=repo, env=env, text=True,
                         capture_output=True, timeout=1400, start_new_session=True)
    out = run.stdout
    assert run.returncode == 0, f"{out[-4000:]}\n{run.stderr[-4000:]}"
    assert "corpus: " in out  # it says which text it trains on
    sample = re.search(r"--- sample from job \d+ .*? ---\n(.+?)\n--- end of sample ---", out, re.S)
    assert sample and len(sample.group(1).strip()) > 50, out[-3000:]
    assert re.search(r"round \d+: iter [\d,]+/[\d,]+, loss [\d.]+, [\d,]+ tok/s \(pc-", out)  # tokens/s per worker
    assert re.search(r"batch \d+ \(hp-fold\): \d+/12 units valid", out)
    assert re.search(r"batch \d+ \(lj-md\) waits: all hosts busy with training", out)
    assert "3 of 3 PCs earned credit" in out
    assert f"http://{StateDir(state_dir).read_head().api_address}/" in out  # where the status page is
    with ScienceStore(state_dir / "salvage.db", state_dir / "science") as store:
        credit = store.credit_by_host()
        fold = next(b for b in store.batches() if b["app"] == "hp-fold")
        valid = store.batch_status(fold["batch"])["results"]["valid"]
    assert {pc for pc in PCS if credit.get(pc, 0) > 0} == PCS, credit
    assert valid >= 2 * fold["done_wus"] > 0  # each fold checked by two PCs
    assert nothing_left(state_dir, repo) == []


@pytest.mark.timeout(900)
def test_ctrl_c_stops_the_demo_cleanly_and_keeps_its_state(fresh):
    repo, env, _ = fresh
    state_dir = repo.parent / "ctrl-c-state"
    # A suite started in the background (`cmd &` in a script) hands its children SIGINT
    # ignored, and Python then never turns Ctrl-C into KeyboardInterrupt: restore it.
    demo = subprocess.Popen([str(repo / ".venv" / "bin" / "salvage"), "demo", "--state-dir", str(state_dir)],
                            cwd=repo, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    try:
        for line in demo.stdout:
            seen.append(line)
            if "units valid" in line:  # the cluster is up, the PCs in, science running
                break
        else:
            pytest.fail("the demo ended before its science ran:\n" + "".join(seen[-60:]))
        os.killpg(demo.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
        rest, _ = demo.communicate(timeout=600)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
    assert demo.returncode == 130, rest[-3000:]
    assert "the demo cluster is stopped. Its jobs, results and credit are kept" in rest, rest[-3000:]
    assert nothing_left(state_dir, repo) == []
    with ScienceStore(state_dir / "salvage.db", state_dir / "science") as store:
        assert "hp-fold" in [b["app"] for b in store.batches()]  # kept for `cluster up`
