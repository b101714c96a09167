"""The volunteer-compute client the owner already runs on this PC (BOINC today).

`BoincManager` lends it every device salvage leaves idle and takes a device
back when salvage's work arrives; `BoincRpc` speaks BOINC's GUI RPC;
`BoincCollector` puts the state on the agent's /metrics. Another client
(Folding@home) fits by implementing `compute.ComputeClient`.
"""
from .compute import ClientError, ComputeClient, ModeState, Overview, ProjectInfo
from .guirpc import (
    BoincAttachError,
    BoincAuthError,
    BoincError,
    BoincGarbage,
    BoincRpc,
    BoincRpcError,
    BoincUnreachable,
)
from .manager import BoincManager, BoincStatus, Hold
from .metrics import BoincCollector

__all__ = [
    "BoincAttachError", "BoincAuthError", "BoincCollector", "BoincError", "BoincGarbage", "BoincManager",
    "BoincRpc", "BoincRpcError", "BoincStatus", "BoincUnreachable", "ClientError", "ComputeClient", "Hold",
    "ModeState", "Overview", "ProjectInfo",
]
