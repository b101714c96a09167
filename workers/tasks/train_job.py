"""The Ray entry point of a single-device training job, run on the PC the head
chose. The model and loop are plain PyTorch (`jobs.gpt.train`); this wrapper
only talks to the head: progress out, stop requests in, and checkpoints both
ways, so the job can resume on any other node. The head imports this module to
send the function, so torch is imported inside it, on the PC only.
"""
from __future__ import annotations

import queue
import shutil
import tempfile
import threading
import time
from pathlib import Path

from jobs.dutycycle import DutyCycle
from jobs.gpt.config import GPTConfig
from workers.headclient import HeadClient, HeadError, HeadUnreachable

from .claims import DeviceClaim
from .pausing import PauseWatch

CHECKPOINT_NAME = "ckpt.pt"
FLUSH_EVERY_S = 0.5
# The final checkpoint is offered to the head this long (the head may be
# restarting, its disk full for a while) before the job goes back to its queue.
HAND_OVER_S = 120.0


class HeadLink:
    """Progress and log lines go out from a background thread, so training
    never waits on the network; replies carry the head's stop request."""

    def __init__(self, client: HeadClient, job_id: int, attempt: int):
        self.client = client
        self.job_id = job_id
        self.attempt = attempt
        self.items: queue.Queue = queue.Queue()
        self.unsent: list[dict] = []  # progress the head has not taken yet: sent again with the next
        self.checkpoint: Path | None = None  # the newest checkpoint the head has not confirmed
        self.stop_requested = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def progress(self, p: dict) -> None:
        self.items.put(("progress", p))

    def log(self, line: str) -> None:
        self.items.put(("log", line))

    def should_stop(self) -> bool:
        return self.stop_requested

    def _flush(self) -> None:
        while True:
            try:
                kind, data = self.items.get_nowait()
            except queue.Empty:
                break
            if kind == "progress" and "checkpoint" in data:
                self.checkpoint = Path(data["checkpoint"])
                data = {k: v for k, v in data.items() if k != "checkpoint"}
            self.unsent.append({"kind": kind, "data": data})
        if self.checkpoint is not None and self.upload(self.checkpoint):
            self.checkpoint = None
        try:
            reply = self.client.post("/api/train/progress",
                                     {"job": self.job_id, "attempt": self.attempt, "items": self.unsent})
            self.unsent = []
            self.stop_requested = bool(reply.get("stop"))
        except (HeadError, HeadUnreachable):
            pass  # the head may be restarting: these go again with the next flush

    def upload(self, path: Path) -> bool:
        """Send the checkpoint to the head, which keeps the job's copy; True once
        the head confirmed it has it whole."""
        if not path.exists():
            return True
        try:
            reply = self.client.upload(f"/api/train/checkpoint?job={self.job_id}&attempt={self.attempt}", path)
        except HeadError as err:
            return err.status == 409  # this attempt is stale: the head does not want it
        except HeadUnreachable:
            return False
        return bool(reply.get("ok"))

    def _run(self) -> None:
        while not self._done.wait(FLUSH_EVERY_S):
            self._flush()

    def close(self, final_checkpoint: Path | None, patience_s: float = HAND_OVER_S) -> bool:
        """Stop sending progress and hand the final checkpoint over; True when the
        head confirmed it (or there was none)."""
        self._done.set()
        self._thread.join()
        self._flush()
        if final_checkpoint is None:
            return True
        deadline = time.monotonic() + patience_s
        wait = 1.0
        while not self.upload(final_checkpoint):
            if time.monotonic() + wait > deadline:
                return False
            time.sleep(wait)
            wait = min(wait * 2, 15.0)
        return True


def run_train_job(job_id: int, attempt: int, config: dict, data: str | None, head: dict,
                  device: str = "cpu") -> dict:
    """Train job `job_id` here on `device` ("cpu" or "gpuN"), resuming from the
    head's checkpoint if any.

    `head`: the API's `address`, the cluster's `token`, and its `ca` (PEM) when it
    speaks TLS. Returns the run's summary, {"error": ...} for a job that cannot
    run, or {"retry": ...} when it should go back to the queue rather than fail:
    its device was paused (it stopped at a checkpoint), or the head could not be
    reached to fetch or take a checkpoint."""
    with DeviceClaim.here(device):  # the PC's own volunteer client lets go of it now
        return _train_here(job_id, attempt, config, data, head, device)


def _train_here(job_id: int, attempt: int, config: dict, data: str | None, head: dict, device: str) -> dict:
    from jobs.gpt.train import USER_ERRORS, train

    workdir = Path(tempfile.mkdtemp(prefix=f"salvage-train-{job_id}-"))
    host, _, port = head["address"].rpartition(":")
    ca_file = None
    if head.get("ca"):
        ca_file = workdir / "head-ca.pem"
        ca_file.write_text(head["ca"])
    client = HeadClient(host, int(port), head["token"], timeout=30, ca_file=ca_file)
    ckpt = workdir / CHECKPOINT_NAME
    link = None
    result: dict = {}
    try:
        try:
            resumed = _fetch(client, job_id, ckpt)
        except (HeadError, HeadUnreachable) as err:
            return {"retry": f"could not fetch the job's checkpoint from the head ({err})"}
        link = HeadLink(client, job_id, attempt)
        if resumed:
            link.log(f"fetched the job's checkpoint from the head ({ckpt.stat().st_size / 2**20:.1f} MiB)")
        pause = PauseWatch.here(device)
        try:
            result = train(GPTConfig.from_dict(config), data, workdir, on_progress=link.progress,
                           should_stop=lambda: link.should_stop() or pause(), on_log=link.log,
                           throttle=DutyCycle.from_env())
        except USER_ERRORS as err:
            link.log(f"error: {err}")
            result = {"error": str(err)}
        result.pop("checkpoint", None)
        why = pause.reason()
        if why and result.get("stopped") and not link.should_stop():
            result = {"retry": f"its device was paused ({why}); it stopped at a checkpoint"}
        return result
    finally:
        # The local copy goes only once the head has confirmed it holds the last one.
        if link is not None and not link.close(ckpt if ckpt.exists() else None) and "error" not in result:
            result.clear()
            result["retry"] = "the head did not take the final checkpoint"
        shutil.rmtree(workdir, ignore_errors=True)


def _fetch(client: HeadClient, job_id: int, dest: Path, tries: int = 5) -> bool:
    """The head's checkpoint of this job into `dest`; False if it has none yet. A
    head that is briefly out of reach (restarting) is tried again with a pause."""
    for attempt in range(tries):
        try:
            return client.download(f"/api/train/checkpoint?job={job_id}", dest)
        except HeadUnreachable:
            if attempt == tries - 1:
                raise
            time.sleep(2.0 * (attempt + 1))
    return False
