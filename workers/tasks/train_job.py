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
from pathlib import Path

from jobs.dutycycle import DutyCycle
from jobs.gpt.config import GPTConfig
from workers.headclient import HeadClient, HeadError, HeadUnreachable

CHECKPOINT_NAME = "ckpt.pt"
FLUSH_EVERY_S = 0.5


class HeadLink:
    """Progress and log lines go out from a background thread, so training
    never waits on the network; replies carry the head's stop request."""

    def __init__(self, client: HeadClient, job_id: int, attempt: int):
        self.client = client
        self.job_id = job_id
        self.attempt = attempt
        self.items: queue.Queue = queue.Queue()
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
        batch, checkpoint = [], None
        while True:
            try:
                kind, data = self.items.get_nowait()
            except queue.Empty:
                break
            if kind == "progress" and "checkpoint" in data:
                checkpoint = data["checkpoint"]
                data = {k: v for k, v in data.items() if k != "checkpoint"}
            batch.append({"kind": kind, "data": data})
        if checkpoint:
            self.upload(Path(checkpoint))
        try:
            reply = self.client.post("/api/train/progress",
                                     {"job": self.job_id, "attempt": self.attempt, "items": batch})
            self.stop_requested = bool(reply.get("stop"))
        except (HeadError, HeadUnreachable):
            pass  # the head may be restarting; the next flush tries again

    def upload(self, path: Path) -> None:
        """Send the checkpoint to the head, which keeps the job's copy."""
        if not path.exists():
            return
        try:
            self.client.upload(f"/api/train/checkpoint?job={self.job_id}&attempt={self.attempt}", path)
        except (HeadError, HeadUnreachable):
            pass

    def _run(self) -> None:
        while not self._done.wait(FLUSH_EVERY_S):
            self._flush()

    def close(self, final_checkpoint: Path | None) -> None:
        self._done.set()
        self._thread.join()
        self._flush()
        if final_checkpoint is not None:
            self.upload(final_checkpoint)


def run_train_job(job_id: int, attempt: int, config: dict, data: str | None,
                  head: str, token: str | None) -> dict:
    """Train job `job_id` here, resuming from the head's checkpoint if any."""
    from jobs.gpt.train import USER_ERRORS, train

    host, _, port = head.rpartition(":")
    client = HeadClient(host, int(port), token, timeout=30)
    workdir = Path(tempfile.mkdtemp(prefix=f"salvage-train-{job_id}-"))
    ckpt = workdir / CHECKPOINT_NAME
    link = None
    try:
        resumed = client.download(f"/api/train/checkpoint?job={job_id}", ckpt)
        link = HeadLink(client, job_id, attempt)
        if resumed:
            link.log(f"fetched the job's checkpoint from the head ({ckpt.stat().st_size / 2**20:.1f} MiB)")
        try:
            summary = train(GPTConfig.from_dict(config), data, workdir, on_progress=link.progress,
                            should_stop=link.should_stop, on_log=link.log, throttle=DutyCycle.from_env())
        except USER_ERRORS as err:
            link.log(f"error: {err}")
            return {"error": str(err)}
        summary.pop("checkpoint", None)
        return summary
    finally:
        if link is not None:
            link.close(ckpt if ckpt.exists() else None)
        shutil.rmtree(workdir, ignore_errors=True)
