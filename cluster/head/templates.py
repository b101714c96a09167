"""Where the configuration that ships with salvage is: deploy/ of the source tree,
which the wheel carries as package data (`cluster/deploy`, a link to deploy/ in the
tree), so an installed salvage renders the same templates as a checkout."""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path

DEPLOY = Path(str(files("cluster") / "deploy"))
DASHBOARDS_JSON = Path(str(files("dashboards") / "json"))  # what `python -m dashboards.generate` writes
