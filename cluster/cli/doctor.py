"""`salvage doctor HEAD:PORT`: is this PC ready to join that cluster? Every check
passes or fails with its fix; the exit status is 1 if any fails."""
from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import asdict
from pathlib import Path

import click

from cluster.head.state import DEFAULT_HTTP_PORT, MIN_TOKEN_CHARS

ARCH_LIST_ENV = "SALVAGE_DOCTOR_ARCH_LIST"


@click.command()
@click.argument("address")
@click.option("--token-file", type=click.Path(path_type=Path), envvar="SALVAGE_TOKEN_FILE", default=None,
              help="The cluster's token, as `worker join` takes it: a copy of the head's STATE_DIR/token "
                   "(mode 600); else $SALVAGE_TOKEN. [env: SALVAGE_TOKEN_FILE]")
@click.option("--ca-fingerprint", envvar="SALVAGE_CA_FINGERPRINT", default=None, metavar="sha256:HEX",
              help="For a head on the LAN: its CA's fingerprint, from its join line. [env: SALVAGE_CA_FINGERPRINT]")
@click.option("--simulate-gpus", "simulate", default=None, metavar="SPEC",
              help="Check these simulated GPUs instead of NVML's, as `worker join` takes them.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: ok, head, checks.")
def doctor(address, token_file, ca_fingerprint, simulate, as_json):
    """Check this PC before it joins the cluster at ADDRESS (the head's HOST:PORT).

    \b
    Python and Ray versions against the head's, torch, the NVIDIA driver, each
    GPU against the architectures the installed torch ships kernels for, free
    disk and memory, the head's API and Ray ports, the clock offset to the head,
    and the token. Each failure comes with its fix; the exit status is 1 if any.

    \b
    $SALVAGE_DOCTOR_ARCH_LIST (e.g. 'sm_50,sm_60,sm_70') replaces the installed
    torch's architectures in the GPU checks: to check a torch build you plan
    to install, and for tests.
    """
    from workers.doctor import Check, check_token_file, check_token_text, diagnose
    from workers.simnvml import SpecError, check_spec

    if simulate is not None:
        try:
            check_spec(simulate)
        except SpecError as err:
            raise click.ClickException(str(err)) from None
    if ca_fingerprint is not None and not re.fullmatch(r"sha256:[0-9a-fA-F]{64}", ca_fingerprint):
        raise click.ClickException("ca-fingerprint: expected sha256: and 64 hex digits, as the join line shows")
    if ":" not in address:
        address = f"{address}:{DEFAULT_HTTP_PORT}"
    arch_list = None
    if (planned := os.environ.get(ARCH_LIST_ENV)) is not None:
        arch_list = [a for a in re.split(r"[,;\s]+", planned) if a]
        bad = [a for a in arch_list if not re.fullmatch(r"(sm|compute)_\d{2,3}[af]?", a)]
        if bad:
            raise click.ClickException(f"{ARCH_LIST_ENV}: expected entries like sm_61 or compute_90, got {bad[0]!r}")
    if token_file is not None:
        token_check, token = check_token_file(token_file.expanduser(), MIN_TOKEN_CHARS)
    elif env_token := os.environ.get("SALVAGE_TOKEN", "").strip():
        token_check = check_token_text(env_token, "$SALVAGE_TOKEN", MIN_TOKEN_CHARS)
        token = env_token if token_check.ok else None
    else:
        token_check, token = Check("token", False, "no token given",
                                   "pass --token-file with a copy of the head's STATE_DIR/token (mode 600)"), None
    try:
        checks = diagnose(address, token=token, token_check=token_check, ca_fingerprint=ca_fingerprint,
                          simulate=simulate, arch_list=arch_list,
                          python_match=os.environ.get("RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL", "patch"))
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    ok = all(c.ok for c in checks)
    if as_json:
        click.echo(json.dumps({"ok": ok, "head": address, "checks": [asdict(c) for c in checks]}, indent=2))
    else:
        _print_table(address, checks)
    sys.exit(0 if ok else 1)


def _print_table(address: str, checks: list) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    table = Table(title=f"salvage doctor — head {address}")
    for col in ("check", "result", "detail", "fix"):
        table.add_column(col)
    for c in checks:
        table.add_row(c.name, "[green]pass[/]" if c.ok else "[red]FAIL[/]", escape(c.detail), escape(c.fix))
    console.print(table)
    bad = [c.name for c in checks if not c.ok]
    if bad:
        console.print(f"[red]{len(bad)} of {len(checks)} checks failed[/] ({', '.join(bad)}): "
                      "apply the fixes and run `salvage doctor` again")
    else:
        console.print(f"[green]all {len(checks)} checks passed[/]: this PC is ready to join")
