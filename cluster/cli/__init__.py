"""`salvage`: the command line for the head, the workers and the jobs. Each group
lives in its own module; only this one registers them.

A command imports torch, numpy-heavy job code or the agent inside itself, so
`salvage --help` and every other command start in a fraction of a second."""
from __future__ import annotations

import click

from .boinc import boinc
from .cluster import cluster
from .demo import demo
from .doctor import doctor
from .science import science
from .train import train
from .worker import worker


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="salvage-cluster", prog_name="salvage", message="%(prog)s %(version)s")
def main():
    """salvage: run a volunteer compute cluster of recycled PCs.

    \b
    On the head:   salvage cluster up            (prints the join line)
    On each PC:    salvage worker join HEAD:PORT
    Anywhere:      salvage cluster status [--head HOST:PORT --token-file FILE]
    Try it all on this machine: salvage demo

    \b
    Shell completion (bash; zsh and fish alike):
      eval "$(_SALVAGE_COMPLETE=bash_source salvage)"
    """


for group in (cluster, worker, train, science, boinc, demo, doctor):
    main.add_command(group)
