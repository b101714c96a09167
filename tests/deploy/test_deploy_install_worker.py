"""deploy/install-worker.sh and the systemd units it installs."""

import shutil
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SCRIPT = DEPLOY / "install-worker.sh"
WORKER_UNIT = DEPLOY / "systemd" / "salvage-worker.service"
HEAD_UNIT = DEPLOY / "systemd" / "salvage-head.service"


def _install(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=30, check=False)


def _written(output: str) -> dict[str, tuple[str, str]]:
    """path -> (mode, content) for every 'would write' block of a dry run."""
    files: dict[str, tuple[str, str]] = {}
    current: str | None = None
    for line in output.splitlines():
        if line.startswith("would write "):
            path, mode = line.removeprefix("would write ").rstrip(":").split(" (mode ")
            current = path
            files[path] = (mode.rstrip(")"), "")
        elif line.startswith("would run:"):
            current = None
        elif current is not None:
            mode, content = files[current]
            files[current] = (mode, content + line + "\n")
    return files


def test_scripts_parse() -> None:
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_script_is_shellcheck_clean() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed")
    result = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


def test_dry_run_writes_the_join_address_and_token_to_a_private_env_file() -> None:
    result = _install("10.0.0.1:6379", "s3cret-Token", "--name", "pc7", "--source", "/srv/salvage.whl", "--dry-run")
    assert result.returncode == 0, result.stderr
    files = _written(result.stdout)
    mode, env = files["/etc/salvage/worker.env"]
    assert mode == "600"
    assert env.splitlines() == [
        "SALVAGE_HEAD_ADDRESS=10.0.0.1:6379",
        "SALVAGE_TOKEN=s3cret-Token",
        "SALVAGE_WORKER_ARGS=--name pc7",
    ]


def test_dry_run_installs_the_worker_unit_that_joins_with_them() -> None:
    result = _install("10.0.0.1:6379", "tok", "--source", "/srv/salvage.whl", "--dry-run")
    assert result.returncode == 0, result.stderr
    mode, unit = _written(result.stdout)["/etc/systemd/system/salvage-worker.service"]
    assert mode == "644"
    # The unit the script writes is the one kept in deploy/systemd.
    assert unit == WORKER_UNIT.read_text()
    assert "Restart=on-failure" in unit.splitlines()
    assert "EnvironmentFile=/etc/salvage/worker.env" in unit.splitlines()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert exec_start == (
        "ExecStart=/opt/salvage/venv/bin/salvage worker join ${SALVAGE_HEAD_ADDRESS} $SALVAGE_WORKER_ARGS"
    )
    # The token reaches the agent through the environment (SALVAGE_TOKEN), not
    # the command line, where every user of the PC could read it in `ps`.
    assert "--token" not in exec_start
    assert "SALVAGE_WORKER_ARGS=\n" in _written(result.stdout)["/etc/salvage/worker.env"][1]


def test_dry_run_installs_into_a_venv_and_enables_the_service_without_touching_the_system() -> None:
    before = Path("/etc/salvage/worker.env").exists()
    result = _install("10.0.0.1:6379", "tok", "--source", "/srv/salvage.whl", "--dry-run")
    assert result.returncode == 0, result.stderr
    runs = [line.removeprefix("would run: ") for line in result.stdout.splitlines() if line.startswith("would run:")]
    assert "python3 -m venv /opt/salvage/venv" in runs
    assert "/opt/salvage/venv/bin/pip install --upgrade /srv/salvage.whl" in runs
    assert runs[-3:] == [
        "systemctl daemon-reload",
        "systemctl enable salvage-worker.service",
        "systemctl restart salvage-worker.service",
    ]
    assert Path("/etc/salvage/worker.env").exists() == before


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["10.0.0.1", "tok"], "ADDRESS"),
        (["10.0.0.1:6379", "to ken"], "TOKEN"),
        (["10.0.0.1:6379", "tok", "--name", "my pc"], "--name"),
        (["10.0.0.1:6379"], "ADDRESS and TOKEN"),
        (["10.0.0.1:6379", "tok", "--frobnicate"], "--frobnicate"),
    ],
)
def test_bad_arguments_get_a_one_line_error_naming_the_field(args: list[str], field: str) -> None:
    result = _install(*args, "--source", "/srv/x", "--dry-run")
    assert result.returncode != 0
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert field in result.stderr


def test_units_restart_on_failure_and_run_the_cli() -> None:
    head = HEAD_UNIT.read_text().splitlines()
    worker = WORKER_UNIT.read_text().splitlines()
    assert "Restart=on-failure" in head and "Restart=on-failure" in worker
    assert "ExecStart=/opt/salvage/venv/bin/salvage cluster up --foreground" in head
    assert "ExecStop=/opt/salvage/venv/bin/salvage cluster down" in head
    assert "WantedBy=multi-user.target" in head and "WantedBy=multi-user.target" in worker


def test_units_pass_systemd_analyze() -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    result = subprocess.run(
        ["systemd-analyze", "verify", str(HEAD_UNIT), str(WORKER_UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # The venv is not installed on this machine; anything else is a real fault.
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if line.strip() and "/opt/salvage/venv/bin/salvage is not executable" not in line
    ]
    assert problems == []
