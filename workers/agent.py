"""The worker agent: probe this PC, measure it, join Ray, report, serve /metrics.

It runs in the foreground (it is what the systemd unit runs) and leaves the
cluster cleanly on SIGTERM or Ctrl-C. It never imports Ray or torch itself:
Ray runs as a child `ray start --block`, torch only in the benchmark child.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from prometheus_client import CollectorRegistry, Histogram, start_http_server

from jobs.dutycycle import DUTY_CYCLE_ENV

from . import benchmark, doctor
from .boinc import BoincCollector, BoincError, BoincManager, BoincRpc
from .gpus import GpuReader, open_nvml
from .headclient import HeadClient, HeadError, HeadUnreachable, fetch_ca
from .health import HealthMonitor, run_check
from .host import Poll, cpu_model, disk_path, sample_host
from .metrics import AgentCollector
from .pauses import Pauses
from .policy import Policy
from .privatefile import write_private
from .raynode import NO_LOG_MONITOR, NodePorts, RayNode, node_ports_args, ray_env, start_lock
from .raytls import node_tls_env
from .records import MAX_TEXT, NAME_RE, GpuSample, HostInfo
from .tasks.claims import CLAIMS_DIR_ENV, claim_names, claimed
from .tasks.pausing import PAUSE_FILE_ENV
from .tasks.science import CHECKPOINT_DIR_ENV

JOIN_TIMEOUT_S = 10.0
# A port picked free for the node can be taken by another process before Ray binds it
# (several nodes starting at once on one machine): the node exits, and is started again.
RAY_START_TRIES = 3
# How long a restarted agent waits for the head to let its name go from the agent
# before it (seconds, once that one has missed its beats), and how often it asks, as
# it does while the head has not seen its Ray node.
NAME_WAIT_S = 30.0
ASK_AGAIN_S = 0.25
TICK_S = 1.0  # how often the agent looks at what its work claims (and lends the rest to BOINC)
NEW_CLAIM_LOOK_S = 0.1  # between ticks, how often it looks for a new claim: BOINC yields that much sooner
ATTACH_WAIT_S = 30.0
MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")


class JoinError(Exception):
    """A join that cannot go on; `str()` is the one-line reason."""


class RayNodeExited(JoinError):
    """The PC's Ray node died before the head saw it (one of its ports taken, most often)."""


@dataclass
class BoincLink:
    """The PC's own BOINC client, which the agent lends the devices salvage leaves idle."""

    host: str = "127.0.0.1"
    port: int = 31416
    password_file: Path | None = None  # None: the client's own gui_rpc_auth.cfg
    idle_s: float = 60.0  # a device idle this long goes back to BOINC

    def rpc(self) -> BoincRpc:
        return BoincRpc(self.host, self.port, password_file=self.password_file)


@dataclass
class AgentConfig:
    address: str  # the head's HOST:PORT (its HTTP API)
    name: str
    token: str  # the cluster's: every request to the head and to Ray carries it
    ca_fingerprint: str | None = None  # a head on the LAN: its CA, as its join line shows it
    metrics_port: int = 9470
    simulate_gpus: str | None = None
    poll_interval: float = 2.0
    heartbeat_interval: float = 2.0  # also how soon an operator's pause reaches the PC
    num_cpus: int | None = None
    node_ip: str | None = None
    duty_cycle: float = 1.0  # the owner's limit: work runs at most this fraction of wall time
    policy: Policy = field(default_factory=Policy)  # the owner's, as loaded at join
    policy_file: Path | None = None  # re-read when it changes
    log_dir: Path = field(default_factory=lambda: Path.home() / ".salvage" / "agent")
    ray_env: dict[str, str] = field(default_factory=dict)
    boinc: BoincLink | None = None
    ray_ports: NodePorts = field(default_factory=NodePorts)  # `worker join --node-manager-port`...


def sanitize_label(value: str) -> str:
    """Ray label values allow [A-Za-z0-9_.-] only, 63 chars at most."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", value).strip("-_.")[:63].strip("-_.")
    return cleaned or "unknown"


def machine_id() -> str:
    """This PC's identity, the same for every agent (and name) it runs."""
    for path in MACHINE_ID_FILES:
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if re.fullmatch(r"[0-9a-f]{32}", text):
            return text
    return f"host-{socket.gethostname()}"[:100]


def local_ip_towards(host: str) -> str:
    """The address this PC uses to reach `host` (a UDP connect sends nothing)."""
    if host.startswith("127."):
        return host
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((host, 9))
        return s.getsockname()[0]


class Agent:
    def __init__(self, config: AgentConfig, say=print):
        if not NAME_RE.fullmatch(config.name):
            raise JoinError(f"name: expected letters, digits, '-', '_' or '.' (at most 63), got {config.name!r}")
        self.config = config
        self.say = say
        self.agent_id = uuid.uuid4().hex
        self.state = "starting"
        self.last_poll: Poll | None = None
        self.speeds: dict[str, float] = {}
        self.gpu_reader = GpuReader(open_nvml(config.simulate_gpus))
        self.host_info: HostInfo | None = None
        self.ray_node: RayNode | None = None
        self.metrics_addr: str | None = None
        self._stop = threading.Event()
        self.epoch: float | None = None  # which start of the head we joined
        self.rejoin_needed = False
        self._metrics_server = None
        self.registry = CollectorRegistry()
        self.poll_seconds = Histogram(
            "salvage_agent_poll_duration_seconds", "Time one hardware poll takes.",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0), registry=self.registry)
        host, _, port = config.address.rpartition(":")
        if not host or not port.isdigit():
            raise JoinError(f"address: expected HOST:PORT of the head, got {config.address!r}")
        self.head_host, self.head_port = host, int(port)
        self.head = HeadClient(host, int(port), config.token)
        self.health = HealthMonitor(check=self._health_check)
        self.pauses: Pauses | None = None  # made at join, once the log dir is known
        self.head_ca: Path | None = None  # the LAN head's CA, once fetched and checked
        self.beat_now = False  # a pause or resume: tell the head without waiting for the next beat
        self.boinc = BoincManager(config.boinc.rpc(), idle_s=config.boinc.idle_s) if config.boinc else None
        self._boinc_paused = False
        self.attaches: dict[str, str] = {}  # the head's attach request id -> its outcome, one line
        self._attaches_lock = threading.Lock()

    # --- the steps of a join ---
    def trust_head(self) -> None:
        """A head on the LAN speaks TLS: take its CA once, pinned to the join line's
        fingerprint, and check every later answer against it."""
        if not self.config.ca_fingerprint:
            return
        ca_file = self.config.log_dir / f"head-ca-{self.head_host}-{self.head_port}.pem"
        try:
            pem = fetch_ca(self.head_host, self.head_port, self.config.ca_fingerprint)
        except (HeadError, HeadUnreachable) as err:
            raise JoinError(str(err)) from None
        ca_file.parent.mkdir(parents=True, exist_ok=True)
        ca_file.write_text(pem)
        self.head = HeadClient(self.head_host, self.head_port, self.config.token, ca_file=ca_file)
        self.head_ca = ca_file

    def contact_head(self) -> dict:
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        while True:
            try:
                return self.head.get("/api/cluster")
            except HeadError as err:
                raise JoinError(f"{err}") from None
            except HeadUnreachable as err:
                if time.monotonic() > deadline:
                    hint = "" if self.config.ca_fingerprint else \
                        "; a head on the LAN needs --ca-fingerprint from its join line"
                    raise JoinError(
                        f"address: no salvage head answers at {self.config.address} "
                        f"(is `salvage cluster up` running there?{hint}) [{err}]") from None
                time.sleep(0.5)

    def probe(self) -> HostInfo:
        self.gpu_reader.start()
        gpus = self.gpu_reader.probe()
        disk = psutil.disk_usage(disk_path())
        info = HostInfo(
            name=self.config.name, cpu_model=cpu_model(),
            cpu_cores=self.config.num_cpus or psutil.cpu_count() or 1,
            ram_bytes=psutil.virtual_memory().total, disk_bytes=disk.total,
            gpus=gpus, notes=list(self.gpu_reader.notes),
            simulated=self.config.simulate_gpus is not None,
            duty_cycle=self.config.duty_cycle, machine_id=machine_id(),
        )
        if gpus and not info.simulated:  # simulated GPUs run on the CPU: nothing to check
            # A card the installed torch cannot drive is not offered (it would fail every
            # job with "no kernel image"); the note names it and the torch build to install.
            for check in doctor.unusable_gpus(gpus, doctor.torch_facts().arch_list):
                gpu = gpus[int(check.name[3:])]
                gpu.problem = f"{check.detail}. Fix: {check.fix}"[:MAX_TEXT]
                info.notes.append(f"GPU {gpu.index} is not offered: {gpu.problem}")
        self.host_info = info
        return info

    def measure(self) -> float | None:
        """Sets this PC's speeds; returns the age in seconds of kept figures, None if measured now."""
        info = self.host_info
        real_gpus = [] if info.simulated else [g.index for g in info.gpus if not g.problem]
        # Same CPU, same GPUs, same Python (hence torch): the same speeds.
        identity = {"cpu": info.cpu_model, "python": sys.executable,
                    "gpus": [[g.index, g.name, g.uuid] for g in info.gpus if not info.simulated]}
        try:
            speeds, age = benchmark.measure_cached(real_gpus, identity, self.config.log_dir / "speed.json")
        except Exception as err:  # a broken torch must not stop a PC from joining
            info.notes.append(f"benchmark failed ({err}); speed unknown")
            speeds, age = {"cpu": 0.0}, None
        info.cpu_gflops = speeds["cpu"] * info.cpu_cores
        for gpu in info.gpus:
            if info.simulated:
                # Simulated GPUs run their work on this CPU, so that is their speed
                # unless the spec file says otherwise.
                sim = self.gpu_reader.nvml._gpus[gpu.index]
                gpu.speed_gflops = sim.gflops if sim.gflops is not None else speeds["cpu"]
            else:
                gpu.speed_gflops = speeds.get(f"gpu{gpu.index}")
        self.speeds = {"cpu": info.cpu_gflops or 0.0}
        self.speeds.update({f"gpu{g.index}": g.speed_gflops or 0.0 for g in info.gpus})
        return age

    # --- this PC's credential: the secret the head gave its name at the first join ---
    @property
    def secret_file(self) -> Path:
        return self.config.log_dir / f"{self.config.name}.secret"

    def secret(self) -> str | None:
        try:
            return self.secret_file.read_text().strip() or None
        except OSError:
            return None

    def keep_secret(self, secret: str) -> None:
        """Written 0600 and in one step: the name is lost to this PC without it."""
        self.secret_file.parent.mkdir(parents=True, exist_ok=True)
        write_private(self.secret_file, (secret + "\n").encode())

    def check_name_free(self, wait: bool = False) -> bool:
        """Whether the head lets this agent have its name now. A name held by another
        PC is refused at once. One held by this PC's last agent (423: a crash or a
        quick reboot the head has not seen yet) comes free within seconds, once that
        agent has missed its beats; with `wait` it is asked again until then."""
        body = {"name": self.config.name, "agent_id": self.agent_id, "secret": self.secret()}
        deadline = time.monotonic() + NAME_WAIT_S
        while True:
            try:
                self.head.post("/api/hosts/check", body)
                return True
            except HeadError as err:
                if err.status != 423 or time.monotonic() > deadline:
                    raise JoinError(str(err)) from None
                if not wait:
                    self.say(f"waiting for the head to let {self.config.name}'s last agent go ({err}); "
                             "starting Ray meanwhile")
                    return False
            self._stop.wait(ASK_AGAIN_S)

    def start_ray(self, cluster: dict) -> None:
        info = self.host_info
        ip = self.config.node_ip or local_ip_towards(self.head_host)
        labels = {
            "salvage.io/host": info.name,
            "salvage.io/agent": self.agent_id,  # the head binds this registration to this very node
            "salvage.io/cpu-only": "true" if info.cpu_only else "false",
            "salvage.io/speed-gflops": str(int(info.speed_gflops)),
            "salvage.io/duty-cycle": f"{self.config.duty_cycle:g}",
        }
        for gpu in info.gpus:
            labels[f"salvage.io/gpu{gpu.index}-model"] = sanitize_label(gpu.name)
            labels[f"salvage.io/gpu{gpu.index}-vram-mb"] = str(gpu.vram_bytes // 2**20)
            labels[f"salvage.io/gpu{gpu.index}-cc"] = gpu.compute_capability
        args = [
            "--address", cluster["ray_address"], "--node-ip-address", ip,
            "--num-cpus", str(info.cpu_cores), "--num-gpus", str(len(info.gpus)),
            "--labels", ",".join(f"{k}={v}" for k, v in labels.items()),
            *node_ports_args(ip, self.config.ray_ports), *NO_LOG_MONITOR,
        ]
        store = os.environ.get("SALVAGE_RAY_OBJECT_STORE_BYTES")
        if store:
            args += ["--object-store-memory", store]
        env = ray_env(self.config.token, self.config.ray_env)
        if cluster.get("ray_tls"):  # a LAN head: Ray's traffic is encrypted, with a certificate for this node
            if self.head_ca is None:
                raise JoinError("tls: the head runs Ray over TLS; join with --ca-fingerprint from its join line")
            try:
                env.update(node_tls_env(self.head, ip, self.head_ca, self.config.log_dir, info.name))
            except (HeadError, HeadUnreachable) as err:
                raise JoinError(str(err)) from None
        # Ray's workers inherit the raylet's environment: every job this node runs sees
        # the owner's limit, the pause file and where science keeps its checkpoints.
        env[DUTY_CYCLE_ENV] = repr(min(self.config.duty_cycle, self.config.policy.duty_cycle))
        env[PAUSE_FILE_ENV] = str(self.pause_file)
        env[CHECKPOINT_DIR_ENV] = str(self.checkpoint_dir)
        env[CLAIMS_DIR_ENV] = str(self.claims_dir)
        self.ray_node = RayNode(args, env, self.config.log_dir / f"{info.name}-ray.log")
        self.ray_node.start()
        self.node_ip = ip

    def register(self) -> None:
        body = {"host": self.host_info.to_dict(), "agent_id": self.agent_id,
                "metrics_addr": self.metrics_addr, "secret": self.secret()}
        deadline = time.monotonic() + 60
        while True:
            try:
                reply = self.head.post("/api/hosts/register", body)
                if reply.get("secret"):  # the first join of this name: from now on it is ours
                    self.keep_secret(reply["secret"])
                return
            except HeadError as err:
                # 425: the head has not seen our Ray node yet; it takes a second or two.
                if err.status != 425 or time.monotonic() > deadline:
                    raise JoinError(str(err)) from None
            except HeadUnreachable as err:  # a busy head: asked again until the deadline
                if time.monotonic() > deadline:
                    raise JoinError(f"address: the head stopped answering while this PC registered [{err}]") from None
            if not self.ray_node.alive():
                raise RayNodeExited(f"ray: the Ray node exited while joining: {self.ray_node.log_tail(3)}")
            time.sleep(ASK_AGAIN_S)

    def serve_metrics(self) -> None:
        self.registry.register(AgentCollector(self))
        if self.boinc is not None:
            self.registry.register(BoincCollector(self.boinc))
        bind = self.node_ip
        try:
            server, _ = start_http_server(self.config.metrics_port, addr=bind, registry=self.registry)
        except OSError as err:
            raise JoinError(f"metrics-port: cannot listen on {bind}:{self.config.metrics_port} "
                            f"({err.strerror})") from None
        self._metrics_server = server
        self.metrics_addr = f"{bind}:{server.server_port}"

    # --- running ---
    def poll(self) -> None:
        start = time.perf_counter()
        try:
            self.last_poll = Poll(host=sample_host(), gpus=self.gpu_reader.sample())
        except Exception as err:  # a driver hiccup must not take the PC out: keep the last reading
            self.say(f"note: hardware poll failed ({type(err).__name__}: {err}); trying again next poll")
        self.poll_seconds.observe(time.perf_counter() - start)

    def heartbeat(self) -> None:
        poll = self.last_poll
        body = {"name": self.config.name, "agent_id": self.agent_id, "state": self.state,
                "lost_gpus": [g.index for g in poll.gpus if g.lost] if poll else [],
                "gpus": [self._reading(g) for g in poll.gpus] if poll else [],
                "paused": self.pauses.state.as_json() if self.pauses else None,
                "health": {"host": self.health.host(), "gpus": {str(i): w for i, w in self.health.gpus().items()}},
                "boinc": self.boinc_report()}
        try:
            reply = self.head.post("/api/hosts/heartbeat", body)
        except HeadError as err:
            if err.status == 404:  # the head forgot us (e.g. its state was reset): register again
                try:
                    self.register()
                except JoinError as refused:  # e.g. 409: another agent holds the name now
                    self.say(f"note: registering again failed ({refused}); trying again next beat")
            return
        except HeadUnreachable:
            return  # the head may be restarting; keep working and try again next beat
        if reply.get("epoch") != self.epoch:
            self.rejoin_needed = True
            return
        directives = dict(reply.get("directives") or {})
        self.start_attaches(directives.pop("boinc_attach", None) or [])
        if self.pauses is not None and directives != self.pauses.directives:
            self.pauses.directives = directives
            if directives.get("check_host"):
                self.health.mark("host", "its tasks kept failing (the head saw it)")
            self.step_aside()
        if self.state in ("idle", "busy"):
            self.state = "busy" if reply.get("running") else "idle"

    def _reading(self, g: GpuSample) -> dict:
        """What the head shows of a GPU now, and acts on (heat, errors)."""
        return {"index": g.index, "lost": g.lost, "temperature_c": g.temperature_c, "utilization": g.utilization,
                "memory_used_bytes": g.memory_used_bytes, "power_w": g.power_w,
                "throttle": sorted(k for k, on in g.throttle.items() if on),
                "xid_errors": self.gpu_reader.xid_errors.get(g.index, 0), "ecc_errors": g.ecc_errors}

    # --- the owner's policy, the operator's pauses, health ---
    @property
    def pause_file(self) -> Path:
        return self.config.log_dir / f"{self.config.name}.pause.json"

    @property
    def checkpoint_dir(self) -> Path:
        return self.config.log_dir / f"{self.config.name}-checkpoints"

    @property
    def claims_dir(self) -> Path:
        return self.config.log_dir / f"{self.config.name}.claims"

    @property
    def policy_report(self) -> Path:
        return self.config.log_dir / f"{self.config.name}.policy.json"

    def _health_check(self, device: str) -> tuple[bool, str]:
        # A simulated GPU's work runs on this CPU: its check is the CPU's.
        if device.startswith("gpu") and self.host_info is not None and self.host_info.simulated:
            device = "cpu"
        return run_check(device)

    def step_aside(self) -> None:
        """Decide again what may run; say what changed, and tell the head at once."""
        if self.pauses is None:
            return
        before = self.pauses.state
        if self.pauses.update(self.last_poll):
            after = self.pauses.state
            if after.host and not before.host:
                self.say(f"paused ({after.host}): {'; '.join(after.detail)}")
            elif before.host and not after.host:
                self.say("resumed" + (f"; still: {'; '.join(after.detail)}" if after.detail else ""))
            elif after.gpus != before.gpus or after.science != before.science:
                self.say(f"devices: {'; '.join(after.detail) or 'all running'}")
            if self.state in ("idle", "busy", "paused"):
                self.state = "paused" if after.host else "idle"
            self.beat_now = True
        self.pauses.write_report(self.policy_report)

    def apply_power_cap(self) -> None:
        """The owner's GPU power cap, where the driver lets this user set it."""
        watts = self.config.policy.power_cap_w
        if watts is None or not self.host_info.gpus:
            return
        refused = self.gpu_reader.set_power_cap(watts)
        if refused:
            self.say(f"note: power cap of {watts:g} W not set ({refused}); run the agent as root or set it "
                     f"with `nvidia-smi -pl {watts:g}`")

    def forget_old_checkpoints(self, older_than_s: float = 2 * 86400) -> None:
        """Science checkpoints of units that went on elsewhere."""
        cutoff = time.time() - older_than_s
        for path in self.checkpoint_dir.glob("science/*.ckpt"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
            except OSError:
                pass

    # --- the PC's own BOINC client ---
    def lend_idle_devices(self) -> None:
        """BOINC stops using what salvage's work claims, and everything while the PC
        is paused; it gets a device back once that has been idle a while."""
        if self.boinc is None:
            return
        paused = self.pauses.state.host if self.pauses else None
        if paused:
            self.boinc.pause(paused)
        elif self._boinc_paused:
            self.boinc.resume()
        self._boinc_paused = bool(paused)
        if not paused:
            self.boinc.update(dict.fromkeys(claimed(self.claims_dir), True))

    def boinc_report(self) -> dict | None:
        """What the head shows of this PC's BOINC client."""
        if self.boinc is None:
            return None
        s = self.boinc.status()
        with self._attaches_lock:
            attaches = dict(self.attaches)
        return {"kind": s.kind, "connected": s.connected, "note": s.note, "modes": s.modes,
                "owner_modes": {r: (m.current if m.temp_left_s > 0 else m.perm) for r, m in s.owner_modes.items()},
                "held": {r: {"reason": h.reason, "detail": h.detail} for r, h in s.held.items()},
                "projects": [{"url": p.url, "name": p.name, "credit": p.host_total_credit} for p in s.projects],
                "tasks": s.tasks, "attaches": attaches}

    def start_attaches(self, requests: list) -> None:
        """The head asks this PC's client to attach to a project: each request once,
        in its own thread (an attach waits for the project's answer), on its own
        connection (the poll loop keeps the other)."""
        for req in requests:
            if not isinstance(req, dict) or not all(isinstance(req.get(k), str) for k in ("id", "url", "key")):
                continue
            with self._attaches_lock:
                if req["id"] in self.attaches:
                    continue
                while len(self.attaches) >= 20:  # the head has long had the oldest outcomes
                    del self.attaches[next(iter(self.attaches))]
                self.attaches[req["id"]] = {"state": "attaching", "detail": ""}
            threading.Thread(target=self._attach, args=(req,), daemon=True, name="boinc-attach").start()

    def _attach(self, req: dict) -> None:
        if self.config.boinc is None:
            outcome = {"state": "failed", "detail": "this PC's agent does not manage BOINC (join with --boinc)"}
        else:
            rpc = self.config.boinc.rpc()
            try:
                answered = rpc.attach_project(req["url"], req["key"], wait_s=ATTACH_WAIT_S)
                outcome = {"state": "attached", "detail": "" if answered else
                           f"the project has not answered within {ATTACH_WAIT_S:.0f} s; the client keeps trying"}
            except BoincError as err:
                outcome = {"state": "failed", "detail": str(err)}
            finally:
                rpc.close()
        self.say(f"BOINC attach {req['url']}: {outcome['state']}" + (f" ({outcome['detail']})" if outcome['detail'] else ""))
        with self._attaches_lock:
            self.attaches[req["id"]] = outcome
        self.beat_now = True

    def run(self) -> int:
        os.umask(0o077)  # its secret, the head's CA and its Ray logs are this PC owner's alone
        self.config.log_dir.mkdir(parents=True, exist_ok=True)
        self.claims_dir.mkdir(exist_ok=True)
        self.pauses = Pauses(self.pause_file, self.config.policy, self.config.policy_file, self.health, self.say)
        self.forget_old_checkpoints()
        self.trust_head()
        cluster = self.contact_head()
        self.say(f"head at {self.config.address} (Ray {cluster['ray_address']})")
        info = self.probe()
        for note in info.notes:
            self.say(f"note: {note}")
        for g in info.gpus:
            self.say(f"GPU {g.index}: {g.name}, {g.vram_bytes / 2**30:.1f} GiB, compute {g.compute_capability}")
        name_free = self.check_name_free()
        age = self.measure()
        kept = "" if age is None else f" (kept from {age / 60:.0f} min ago)"
        self.say(f"measured speed: {info.speed_gflops:.1f} GFLOP/s{kept}")
        self.poll()
        self.apply_power_cap()
        self.step_aside()
        self.join_ray(cluster, first=True, name_free=name_free)
        self.say(f"joined as {info.name}; metrics on http://{self.metrics_addr}/metrics")
        self.lend_idle_devices()
        if self.boinc is not None:
            self.say(self.describe_boinc())
        self._install_signal_handlers()
        next_beat = next_poll = 0.0
        tick = min(TICK_S, self.config.poll_interval)
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_poll:
                next_poll = now + self.config.poll_interval
                self.poll()
                if self.last_poll:
                    self.health.observe(self.last_poll.gpus, self.gpu_reader.xid_errors)
                    self.health.due({f"gpu{g.index}" for g in self.last_poll.gpus if g.lost})
                for note in self.health.take_notes():
                    self.say(note)
                self.step_aside()
            self.lend_idle_devices()
            if now >= next_beat or self.beat_now:
                self.beat_now = False
                self.heartbeat()
                next_beat = now + self.config.heartbeat_interval
            if self.rejoin_needed or not self.ray_node.alive():
                self.rejoin()
            self.wait_tick(tick)
        self.leave()
        return 0

    def wait_tick(self, tick: float) -> None:
        """Until the next tick, or sooner when work claims a device that BOINC may be using."""
        if self.boinc is None:
            self._stop.wait(tick)
            return
        seen = claim_names(self.claims_dir)
        end = time.monotonic() + tick
        while not self._stop.wait(min(NEW_CLAIM_LOOK_S, max(0.0, end - time.monotonic()))):
            if time.monotonic() >= end or not claim_names(self.claims_dir) <= seen:
                return

    def describe_boinc(self) -> str:
        s = self.boinc.status()
        where = f"{self.config.boinc.host}:{self.config.boinc.port}"
        if not s.connected:
            return f"note: BOINC at {where}: {s.note}; salvage carries on and tries again each second"
        return (f"BOINC at {where}: {len(s.projects)} project(s), {s.tasks.get('running', 0)} task(s) running; "
                f"it gets every device salvage leaves idle for {self.config.boinc.idle_s:g} s")

    def join_ray(self, cluster: dict, first: bool = False, name_free: bool = True) -> None:
        """`name_free` False: the head still holds this PC's name for its last agent, and
        this PC's Ray node starts while it waits (seconds each). Our metrics server starts
        only after: on the last agent's port, it would answer the head's look for that agent."""
        with start_lock():  # held until the head sees our node
            for attempt in range(1, RAY_START_TRIES + 1):
                self.start_ray(cluster)  # ports picked afresh each time
                try:
                    if not name_free:
                        name_free = self.check_name_free(wait=True)
                    if first and self._metrics_server is None:
                        self.serve_metrics()
                    self.register()
                    break
                except BaseException as err:
                    self.ray_node.stop()
                    if not isinstance(err, RayNodeExited) or attempt == RAY_START_TRIES:
                        raise
                    self.say(f"note: {err}; starting it again ({attempt}/{RAY_START_TRIES - 1})")
        self.epoch = cluster.get("epoch")
        self.rejoin_needed = False
        self.state = "paused" if self.pauses and self.pauses.state.host else "idle"

    def rejoin(self) -> None:
        """The head restarted (a new Ray cluster) or our Ray node died: start a
        fresh node and register again, waiting for the head as long as it takes."""
        self.state = "starting"
        self.ray_node.stop(timeout=10)
        self.say("rejoining: the head restarted or the Ray node stopped")
        while not self._stop.is_set():
            try:
                cluster = self.head.get("/api/cluster")
                self.join_ray(cluster)
                self.say(f"rejoined as {self.config.name}")
                return
            except (HeadError, HeadUnreachable, JoinError) as err:
                self.say(f"rejoin failed ({err}); retrying")
                self._stop.wait(2.0)

    def _install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._stop.set())

    def leave(self) -> None:
        self.state = "leaving"
        if self.ray_node:
            self.ray_node.stop(timeout=10)
        if self.boinc is not None:  # the owner's own modes come back
            self.boinc.stop()
        try:
            self.head.post("/api/hosts/leave", {"name": self.config.name, "agent_id": self.agent_id})
        except (HeadError, HeadUnreachable):
            pass  # the head will mark us lost instead
        if self._metrics_server:
            self._metrics_server.shutdown()
        self.say(f"{self.config.name} left the cluster")
