"""What the systemd units and an operator's scripts rely on in the command line:
every option of `cluster up` and `worker join` also comes from a SALVAGE_ variable
(so an env file can set it), the read-only commands can ask a head from anywhere,
`--version`, and a one-line error for a state dir this user cannot read."""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

import click
import pytest

from cluster.cli import main

REPO = Path(__file__).resolve().parents[2]
READ_ONLY = [("cluster", "status"), ("worker", "list"), ("train", "list"), ("train", "logs"),
             ("science", "status"), ("boinc", "status")]


def _command(*path: str) -> click.Command:
    command = main
    for name in path:
        command = command.commands[name]
    return command


def _run(*args: str, env: dict[str, str] | None = None, user: str | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", **(env or {})}
    prefix = ["setpriv", "--reuid", user, "--regid", "nogroup", "--clear-groups"] if user else []
    return subprocess.run([*prefix, sys.executable, "-m", "cluster.cli", *args], capture_output=True, text=True,
                          timeout=60, env=full, cwd="/", check=False)


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.mark.parametrize("path", [("cluster", "up"), ("worker", "join")])
def test_every_option_has_a_salvage_variable_named_after_it_and_shown_in_help(path):
    command = _command(*path)
    helptext = command.get_help(click.Context(command, terminal_width=400))
    options = [p for p in command.params if isinstance(p, click.Option) and not p.hidden and p.name != "help"]
    assert len(options) >= 15
    for option in options:
        flag = max(option.opts, key=len)
        expected = "SALVAGE_" + flag.removeprefix("--").upper().replace("-", "_")
        assert option.envvar == expected, flag
        assert f"[env: {expected}]" in helptext, flag
    for argument in (p for p in command.params if isinstance(p, click.Argument)):
        assert argument.envvar == "SALVAGE_HEAD"  # worker join's ADDRESS, as the unit's env file sets it


def test_the_port_flags_of_the_firewall_table_exist_on_both_sides():
    up = {max(p.opts, key=len) for p in _command("cluster", "up").params}
    join = {max(p.opts, key=len) for p in _command("worker", "join").params}
    node = {"--node-manager-port", "--object-manager-port", "--min-worker-port", "--max-worker-port",
            "--metrics-export-port", "--dashboard-agent-grpc-port", "--dashboard-agent-listen-port",
            "--runtime-env-agent-port"}
    assert node <= up and node <= join
    assert {"--port", "--http-port", "--dashboard-port", "--ray-client-server-port", "--prometheus-port",
            "--alertmanager-port"} <= up
    assert "--metrics-port" in join
    doc = (REPO / "docs" / "operator.md").read_text()
    for flag in sorted(node | up & {"--port", "--http-port", "--dashboard-port", "--ray-client-server-port",
                                    "--prometheus-port", "--alertmanager-port"} | {"--metrics-port"}):
        assert f"`{flag}`" in doc, f"docs/operator.md's port table lacks {flag}"


def test_a_variable_takes_effect_like_its_flag(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.2", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = _run("cluster", "up", env={"SALVAGE_STATE_DIR": str(tmp_path / "s"), "SALVAGE_PORT": str(port)})
    assert f"port: 127.0.0.2:{port} is already in use" in _one_line_error(proc)
    assert (tmp_path / "s").is_dir()  # SALVAGE_STATE_DIR was taken too
    proc = _run("worker", "join", env={"SALVAGE_HEAD": "127.0.0.2:1", "SALVAGE_NODE_MANAGER_PORT": "12000"})
    assert _one_line_error(proc) == ("Error: node-manager-port: 12000 lies in the worker port range 10002-19999; "
                                     "pick one outside it")
    proc = _run("worker", "join", env={"SALVAGE_HEAD": "127.0.0.2:1", "SALVAGE_DUTY_CYCLE": "1.5"})
    assert _one_line_error(proc).startswith("Error: duty-cycle: expected a fraction in (0, 1]")


@pytest.mark.parametrize("path", READ_ONLY)
def test_read_only_commands_can_ask_a_head_elsewhere(path):
    names = {p.name: p for p in _command(*path).params}
    assert names["head"].envvar == "SALVAGE_HEAD" and names["token_file"].envvar == "SALVAGE_TOKEN_FILE"
    assert names["ca_fingerprint"].envvar == "SALVAGE_CA_FINGERPRINT" and "state_dir" in names


def test_head_needs_a_token():
    proc = _run("cluster", "status", "--head", "127.0.0.2:1", env={"SALVAGE_TOKEN": "", "SALVAGE_TOKEN_FILE": ""})
    assert _one_line_error(proc).startswith("Error: token: expected the cluster's token in --token-file")


def test_version():
    proc = _run("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"salvage {version('salvage-cluster')}"


@pytest.fixture
def var_lib():
    """A folder anyone may enter, as /var/lib is (pytest's own tmp_path is its owner's alone)."""
    path = Path(tempfile.mkdtemp(prefix="salvage-var-lib-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_a_state_dir_this_user_cannot_read_gets_a_one_line_error_saying_what_to_do(var_lib):
    state = var_lib / "salvage"  # as the head's unit keeps it: mode 700, its service user's
    state.mkdir(mode=0o700)
    (state / "head.json").write_text("{}")
    if os.geteuid() == 0:  # root reads everything: ask as another user, as an operator on the head would
        proc = _run("cluster", "status", env={"HOME": str(var_lib), "SALVAGE_STATE_DIR": str(state)}, user="nobody")
    else:
        state.chmod(0)
        proc = _run("cluster", "status", env={"SALVAGE_STATE_DIR": str(state)})
        state.chmod(0o700)
    line = _one_line_error(proc)
    assert f"state-dir: {state} is not readable by you" in line
    assert "sudo -u" in line and "--head HOST:PORT --token-file FILE" in line


def test_the_same_webhook_at_every_start_keeps_the_operators_alertmanager_edits(tmp_path):
    """A unit's env file passes SALVAGE_ALERT_WEBHOOK at every start: that must not undo an
    e-mail receiver the operator added; a new URL writes the file afresh."""
    if not (shutil.which("prometheus") and shutil.which("prometheus-alertmanager")):
        pytest.skip("needs prometheus and prometheus-alertmanager")
    state, url = tmp_path / "state", "http://127.0.0.1:9/alerts"
    with socket.socket() as s:  # `up` stops at this port, after writing Alertmanager's configuration
        s.bind(("127.0.0.2", 0))
        s.listen()
        env = {"SALVAGE_STATE_DIR": str(state), "SALVAGE_PORT": str(s.getsockname()[1]), "SALVAGE_ALERTMANAGER": "1",
               "SALVAGE_ALERT_WEBHOOK": url}
        assert "is already in use" in _one_line_error(_run("cluster", "up", env=env))
        config = state / "alertmanager" / "alertmanager.yml"
        assert url in config.read_text()
        edited = config.read_text().replace("  # - name: email", "  # - name: email (mine)")
        config.write_text(edited)
        assert "is already in use" in _one_line_error(_run("cluster", "up", env=env))
        assert config.read_text() == edited
        env["SALVAGE_ALERT_WEBHOOK"] = "http://127.0.0.1:9/other"
        assert "is already in use" in _one_line_error(_run("cluster", "up", env=env))
        assert "/other" in config.read_text() and "(mine)" not in config.read_text()
