"""deploy/install-worker.sh and the systemd units it installs."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SCRIPT = DEPLOY / "install-worker.sh"
WORKER_UNIT = DEPLOY / "systemd" / "salvage-worker.service"
HEAD_UNIT = DEPLOY / "systemd" / "salvage-head.service"


TOKEN = "3f9c" * 16  # what a head's STATE_DIR/token holds: 64 characters
FINGERPRINT = "sha256:" + "ab" * 32


def _install(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=30, check=False,
                          input=stdin)


@pytest.fixture
def token_file(tmp_path: Path) -> str:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return str(path)


def _written(output: str) -> dict[str, tuple[str, str, str]]:
    """path -> (mode, owner, content) for every 'would write' block of a dry run."""
    files: dict[str, tuple[str, str, str]] = {}
    current: str | None = None
    for line in output.splitlines():
        if line.startswith("would write "):
            path, rest = line.removeprefix("would write ").rstrip(":").split(" (mode ")
            mode, owner = rest.rstrip(")").split(", owner ")
            current = path
            files[path] = (mode, owner, "")
        elif line.startswith("would run:"):
            current = None
        elif current is not None:
            mode, owner, content = files[current]
            files[current] = (mode, owner, content + line + "\n")
    return files


def _env(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def test_scripts_parse() -> None:
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_script_is_shellcheck_clean() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed")
    result = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


def test_the_token_goes_to_a_file_only_the_agent_reads_and_is_never_shown(token_file: str) -> None:
    result = _install("10.0.0.1:8470", "--token-file", token_file, "--ca-fingerprint", FINGERPRINT,
                      "--name", "pc7", "--source", "/srv/salvage.whl", "--dry-run")
    assert result.returncode == 0, result.stderr
    files = _written(result.stdout)
    mode, owner, content = files["/etc/salvage/worker.token"]
    assert (mode, owner) == ("600", "salvage")  # the unit's User=, and no one else
    assert content == "<the cluster's token: 64 characters, not shown>\n"
    assert TOKEN not in result.stdout + result.stderr
    mode, owner, env = files["/etc/salvage/worker.env"]
    assert _env(env) == {"SALVAGE_HEAD": "10.0.0.1:8470", "SALVAGE_CA_FINGERPRINT": FINGERPRINT, "SALVAGE_NAME": "pc7"}
    assert TOKEN not in env and "TOKEN" not in "".join(_env(env))


def test_the_token_may_come_on_standard_input() -> None:
    result = _install("10.0.0.1:8470", "--token-file", "-", "--source", "/srv/salvage.whl", "--dry-run",
                      stdin=TOKEN + "\n")
    assert result.returncode == 0, result.stderr
    assert "64 characters" in _written(result.stdout)["/etc/salvage/worker.token"][2]
    assert _env(_written(result.stdout)["/etc/salvage/worker.env"][2]) == {"SALVAGE_HEAD": "10.0.0.1:8470"}


def test_dry_run_installs_the_worker_unit_that_joins_with_them(token_file: str) -> None:
    result = _install("10.0.0.1:8470", "--token-file", token_file, "--source", "/srv/salvage.whl", "--dry-run")
    assert result.returncode == 0, result.stderr
    mode, _, unit = _written(result.stdout)["/etc/systemd/system/salvage-worker.service"]
    assert mode == "644"
    # The unit the script writes is the one kept in deploy/systemd.
    assert unit == WORKER_UNIT.read_text()
    lines = unit.splitlines()
    assert "Restart=on-failure" in lines
    assert "EnvironmentFile=/etc/salvage/worker.env" in lines
    assert "Environment=SALVAGE_TOKEN_FILE=/etc/salvage/worker.token" in lines
    # Everything else comes from the env file (SALVAGE_HEAD, ...): the command line
    # that every user of the PC sees in `ps` holds no setting, let alone the token.
    exec_start = next(line for line in lines if line.startswith("ExecStart="))
    assert exec_start == "ExecStart=/opt/salvage/venv/bin/salvage worker join"


def test_dry_run_installs_into_a_venv_and_enables_the_service_without_touching_the_system(token_file: str) -> None:
    before = Path("/etc/salvage/worker.env").exists()
    result = _install("10.0.0.1:8470", "--token-file", token_file, "--source", "/srv/salvage.whl", "--dry-run")
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
    assert not Path("/etc/salvage/worker.token").exists() or before


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["10.0.0.1", "--token-file", "TOKEN"], "ADDRESS"),
        (["10.0.0.1:8470", TOKEN], "one ADDRESS"),  # a token as an argument is refused
        (["10.0.0.1:8470"], "--token-file"),
        (["10.0.0.1:8470", "--token-file", "/nonexistent/token"], "--token-file"),
        (["10.0.0.1:8470", "--token-file", "SHORT"], "--token-file"),
        (["10.0.0.1:8470", "--token-file", "TOKEN", "--ca-fingerprint", "sha256:abc"], "--ca-fingerprint"),
        (["10.0.0.1:8470", "--token-file", "TOKEN", "--name", "my pc"], "--name"),
        (["10.0.0.1:8470", "--token-file", "TOKEN", "--frobnicate"], "--frobnicate"),
    ],
)
def test_bad_arguments_get_a_one_line_error_naming_the_field(tmp_path: Path, args: list[str], field: str) -> None:
    (tmp_path / "TOKEN").write_text(TOKEN)
    (tmp_path / "SHORT").write_text("tok")
    args = [str(tmp_path / a) if a in ("TOKEN", "SHORT") else a for a in args]
    result = _install(*args, "--source", "/srv/x", "--dry-run")
    assert result.returncode != 0
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert field in result.stderr
    assert TOKEN not in result.stderr


def test_units_restart_on_failure_and_run_the_cli() -> None:
    head = HEAD_UNIT.read_text().splitlines()
    worker = WORKER_UNIT.read_text().splitlines()
    assert "Restart=on-failure" in head and "Restart=on-failure" in worker
    assert "ExecStart=/opt/salvage/venv/bin/salvage cluster up --foreground" in head
    assert "ExecStop=/opt/salvage/venv/bin/salvage cluster down" in head
    assert "EnvironmentFile=-/etc/salvage/head.env" in head  # optional: a loopback head needs none
    assert "Environment=SALVAGE_STATE_DIR=/var/lib/salvage" in head and "StateDirectoryMode=0700" in head
    assert "WantedBy=multi-user.target" in head and "WantedBy=multi-user.target" in worker


@pytest.mark.parametrize("example", ["head.env", "worker.env"])
def test_the_example_env_files_set_only_options_the_commands_have(example: str) -> None:
    """Every SALVAGE_ name in the shipped examples (commented out or not) is an option's
    variable, so an operator who uncomments one gets what it says."""
    from click.testing import CliRunner

    from cluster.cli import main

    command = ["cluster", "up"] if example == "head.env" else ["worker", "join"]
    helptext = CliRunner().invoke(main, [*command, "--help"], terminal_width=400).output
    names = re.findall(r"^#?(SALVAGE_\w+)=", (DEPLOY / "systemd" / example).read_text(), re.M)
    assert len(names) >= 3
    for name in names:
        assert f"[env: {name}]" in helptext or name == "SALVAGE_HEAD" and "SALVAGE_HEAD" in helptext, name


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
