"""`python -m cluster.cli`: the `salvage` command, for processes that start it
with the same interpreter (the demo, the tests)."""
from . import main

main()
