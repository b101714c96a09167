"""`python -m cluster.head --state-dir DIR`: the coordinator of the cluster whose
`head.json` is in DIR (written by `salvage cluster up`)."""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

from workers.raynode import ray_tls_env

from .state import StateDir
from .tls import ray_head


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.head")
    parser.add_argument("--state-dir", required=True, type=Path)
    args = parser.parse_args(argv)
    os.umask(0o077)  # the database, logs and checkpoints are the cluster owner's alone
    state = StateDir(args.state_dir)
    config = state.read_head()
    if config is None:
        print(f"state-dir: no head.json in {state.path}; run `salvage cluster up`", file=sys.stderr)
        return 2
    # Ray's servers listen on every address even on loopback, so its token auth is
    # always on. Imported only now: Ray reads its auth settings from the environment once.
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=state.token())
    if config.lan:  # and on the LAN its traffic is encrypted: this process and the Ray head it starts
        files = ray_head(state.tls_dir, config.host)
        os.environ.update(ray_tls_env(files.ca, files.cert, files.key))
    from .coordinator import Coordinator

    return Coordinator(state, config).run()


if __name__ == "__main__":
    try:
        code = main()
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip Ray's exit hooks: with the head gone they can wait on it for minutes.
    os._exit(code)
