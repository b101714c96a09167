"""`salvage doctor`: is this PC ready to join a cluster?

Each check is a small pure function of facts gathered elsewhere, returning a
`Check` that passes or fails with the fix; `diagnose` gathers the facts (the
head's API, NVML, a torch child, psutil) and runs them all. The agent uses
`unusable_gpus` at join, and `failure_reason` turns a failed child process
into its one-line cause.

torch is imported only in a child process: importing it takes seconds, and a
broken install (a missing CUDA library, a segfault) must be a failed check
with its reason, never a crash of the doctor.
"""
from __future__ import annotations

import email.utils
import json
import os
import platform
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path

import psutil

from .gpus import GpuReader, open_nvml
from .headclient import HeadClient, HeadError, HeadUnreachable, fetch_ca
from .host import disk_path
from .records import GpuInfo

GIB = 2**30
MIN_FREE_DISK = 5 * GIB  # Ray's logs and spilled objects (/tmp) and the agent's files (~/.salvage)
RAY_DISK_LIMIT = 0.95  # Ray refuses to store objects on a disk fuller than this (local_fs_capacity_threshold)
MIN_AVAILABLE_RAM = 2 * GIB  # a raylet, a Ray worker with torch, and the object store's share
MAX_CLOCK_OFFSET_S = 2.0  # logs, the status page and science deadlines are read on the head's clock
HEAD_TIMEOUT_S = 5.0
TORCH_TIMEOUT_S = 120.0
TORCH_INDEX = "https://download.pytorch.org/whl"
# The first NVIDIA driver each CUDA major release runs on (minor version compatibility).
MIN_DRIVER = {11: (450, 80, 2), 12: (525, 60, 13), 13: (580, 65, 6)}
BLACKWELL_DRIVER = (570,)  # the first driver branch for cards of compute capability 10.x and 12.x
# Kernels (sm_XY) in torch 2.13's CUDA wheels for x86_64, oldest CUDA first: a fix names
# the first build that runs the card. From torch's own table, torch.cuda.PYTORCH_RELEASES_CODE_CC.
TORCH_BUILDS = {"cu126": (50, 60, 70, 75, 80, 86, 90), "cu129": (75, 80, 86, 90, 100, 120),
                "cu130": (75, 80, 86, 90, 100, 120)}
# Tegra/Jetson parts: kernels built for them run nowhere else, and they run no others.
INTEGRATED_CCS = {(5, 3), (6, 2), (7, 2), (8, 7), (10, 1)}
README_TORCH = "README: Installing PyTorch for GPUs"


@dataclass(frozen=True)
class Check:
    """One verdict. `fix` says what to do when `ok` is False ("" when it passes)."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


def passed(name: str, detail: str) -> Check:
    return Check(name, True, detail)


def failed(name: str, detail: str, fix: str) -> Check:
    return Check(name, False, detail, fix)


# --- a failed child process, in one line ---

def failure_reason(proc: subprocess.CompletedProcess | subprocess.CalledProcessError) -> str:
    """Why a child failed, in one line: a Python traceback's exception line (torch's
    CUDA errors put advice lines after it), else the last line of its stderr, else
    its exit status or the signal that killed it."""
    err = proc.stderr or ""
    if isinstance(err, bytes):
        err = err.decode(errors="replace")
    lines = err.splitlines()
    line = ""
    start = max((i for i, text in enumerate(lines) if text.startswith("Traceback (most recent call last)")),
                default=None)
    if start is not None:
        line = next((text for text in lines[start + 1:] if text.strip() and not text[0].isspace()), "")
    if not line:
        line = next((text for text in reversed(lines) if text.strip()), "")
    line = line.strip()[:300]
    if proc.returncode is not None and proc.returncode < 0:
        try:
            killed = f"killed by {signal.Signals(-proc.returncode).name}"
        except ValueError:
            killed = f"killed by signal {-proc.returncode}"
        return f"{killed}: {line}" if line else killed
    return line or f"exit status {proc.returncode}"


# --- versions: Ray refuses a node whose Ray or Python differs from the head's ---

def check_python(here: str, head: str, match: str = "patch") -> Check:
    """`match` is Ray's RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL: "patch" (its default)
    needs 3.11.7 == 3.11.7, "minor" only 3.11 == 3.11."""
    parts = 3 if match == "patch" else 2
    if here.split(".")[:parts] == head.split(".")[:parts]:
        return passed("python", f"Python {here}, as the head's ({head})")
    return failed("python", f"Python {here} here, {head} on the head: Ray refuses to join a node whose Python differs",
                  f"make this PC's venv with Python {head} (e.g. `uv venv --python {head}`) and reinstall salvage in it")


def check_ray(here: str | None, head: str) -> Check:
    if here == head:
        return passed("ray", f"Ray {here}, as the head's")
    return failed("ray", f"Ray {here or 'is not installed'} here, {head} on the head: Ray refuses a node of another version",
                  f"pip install 'ray[default]=={head}'")


def check_salvage(here: str | None, head: str) -> Check:
    if here == head:
        return passed("salvage", f"salvage {here}, as the head's")
    return failed("salvage", f"salvage {here or 'is not installed'} here, {head} on the head: "
                             "the agent and the tasks it runs must match the head",
                  f"install salvage {head} here, from the same source or release as the head")


# --- torch and the GPUs ---

@dataclass(frozen=True)
class TorchFacts:
    """What the installed torch is; `error` (one line) when it does not import."""

    version: str | None = None
    cuda: str | None = None  # torch.version.cuda: None for a CPU-only build
    arch_list: tuple[str, ...] | None = None  # torch.cuda.get_arch_list(); None when torch is broken
    device_count: int = 0
    error: str | None = None


_TORCH_PROBE = ("import json, torch\n"
                "print(json.dumps({'version': torch.__version__, 'cuda': torch.version.cuda,"
                " 'arch_list': torch.cuda.get_arch_list(), 'device_count': torch.cuda.device_count()}))")


def torch_facts(timeout: float = TORCH_TIMEOUT_S) -> TorchFacts:
    """The installed torch, asked in a child process (with this Python)."""
    try:
        proc = subprocess.run([sys.executable, "-P", "-c", _TORCH_PROBE], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return TorchFacts(error=f"importing torch took over {timeout:.0f} s")
    if proc.returncode != 0:
        return TorchFacts(error=failure_reason(proc))
    try:
        data = json.loads(proc.stdout.strip().splitlines()[-1])
        return TorchFacts(version=str(data["version"]), cuda=data["cuda"], arch_list=tuple(data["arch_list"]),
                          device_count=int(data["device_count"]))
    except (ValueError, KeyError, IndexError, TypeError):
        return TorchFacts(error=f"torch answered something unexpected: {proc.stdout.strip()[-200:]!r}")


def check_torch(facts: TorchFacts) -> Check:
    if facts.error is not None:
        missing = "No module named 'torch'" in facts.error
        return failed("torch", "torch is not installed" if missing else f"torch does not import: {facts.error}",
                      "pip install torch (for NVIDIA GPUs a CUDA build, before salvage: " + README_TORCH + ")")
    build = f"CUDA {facts.cuda}" if facts.cuda else "CPU-only build"
    return passed("torch", f"torch {facts.version} ({build})")


def parse_cc(text: str) -> tuple[int, int]:
    major, minor = text.split(".")
    return int(major), int(minor)


def code_runs(code: str, cc: tuple[int, int]) -> bool:
    """Whether a build target of torch's arch list runs on a GPU of this compute
    capability: sm_XY runs on X.Y and later minors of X; compute_XY (PTX) is compiled
    by the driver for X.Y and anything newer; sm_XYa is for X.Y alone."""
    m = re.fullmatch(r"(sm|compute)_(\d+)(\d)([af]?)", code.strip())
    if not m:
        return False
    built = (int(m.group(2)), int(m.group(3)))
    if m.group(4) == "a" or built in INTEGRATED_CCS or cc in INTEGRATED_CCS:
        return cc == built
    if m.group(1) == "compute":
        return cc >= built
    return cc[0] == built[0] and cc[1] >= built[1]


def torch_build_fix(cc: tuple[int, int]) -> str:
    """How to get a torch with kernels for this compute capability, or why there is none."""
    sm = f"sm_{cc[0]}{cc[1]}"
    builds = [b for b, codes in TORCH_BUILDS.items() if any(code_runs(f"sm_{c}", cc) for c in codes)]
    if not builds:
        return (f"no current torch build has kernels for {sm} (compute capability {cc[0]}.{cc[1]}): "
                "this card cannot run salvage's work; the PC can still join for its CPU")
    build = builds[0]
    cuda = f"{build[2:-1]}.{build[-1]}"
    driver = ".".join(map(str, max(MIN_DRIVER[int(cuda.split(".")[0])], BLACKWELL_DRIVER if cc[0] >= 10 else ())))
    dropped = builds[-1] != list(TORCH_BUILDS)[-1]  # the newest builds no longer ship it
    older = " (or cu118 with an older torch)" if dropped else ""
    return (f"install a torch build that {'still ' if dropped else ''}ships {sm}: "
            f"pip install torch --index-url {TORCH_INDEX}/{build}{older}, with NVIDIA driver >= {driver} ({README_TORCH})")


def check_gpu(gpu: GpuInfo, arch_list: list[str] | tuple[str, ...] | None) -> Check:
    """Can the installed torch run kernels on this GPU? `arch_list` is
    torch.cuda.get_arch_list(): [] for a CPU-only build, None when torch is broken."""
    name = f"gpu{gpu.index}"
    cc = parse_cc(gpu.compute_capability)
    card = f"{gpu.name} (compute capability {gpu.compute_capability}, sm_{cc[0]}{cc[1]})"
    if arch_list is None:
        return failed(name, f"{card}: no working torch to run it", "fix torch first (see the torch check)")
    if not arch_list:
        return failed(name, f"{card}: this torch is a CPU-only build, so the card would sit idle", torch_build_fix(cc))
    runs = [code for code in arch_list if code_runs(code, cc)]
    if runs:
        return passed(name, f"{card}: torch has kernels for it ({', '.join(runs)})")
    return failed(name, f"{card}: this torch ships kernels for {', '.join(arch_list)} only", torch_build_fix(cc))


def unusable_gpus(gpus: list[GpuInfo], arch_list: list[str] | tuple[str, ...] | None) -> list[Check]:
    """The GPUs the installed torch cannot use, each naming the card and the fix
    (what the agent notes at join)."""
    return [c for c in (check_gpu(g, arch_list) for g in gpus) if not c.ok]


def _driver_tuple(text: str) -> tuple[int, ...] | None:
    return tuple(map(int, text.split("."))) if re.fullmatch(r"\d+(\.\d+)*", text) else None


def check_driver(driver: str | None, nvml_error: str | None, nvidia_on_bus: bool, torch_cuda: str | None) -> Check:
    """The NVIDIA driver NVML reports (None: NVML did not start), against what
    torch's CUDA needs (CUDA 12.6, the build for older cards, when torch has none)."""
    if driver == "simulated":
        return passed("driver", "simulated GPUs (--simulate-gpus): no driver to check")
    if driver is None:
        if not nvidia_on_bus:
            return passed("driver", "no NVIDIA GPU on this PC: it joins as CPU-only")
        return failed("driver", f"an NVIDIA GPU is on the PCI bus but its driver does not answer ({nvml_error})",
                      "install the NVIDIA driver (Debian: apt-get install nvidia-driver; Ubuntu: ubuntu-drivers install) "
                      f"and reboot; GTX 10-series cards need one of at least 525 ({README_TORCH})")
    cuda = torch_cuda or "12.6"
    major = int(cuda.split(".")[0])
    need = MIN_DRIVER.get(major)
    have = _driver_tuple(driver)
    if need is None or have is None:
        return passed("driver", f"NVIDIA driver {driver}")
    if have >= need:
        return passed("driver", f"NVIDIA driver {driver} (CUDA {cuda} needs {'.'.join(map(str, need))})")
    whose = "torch's" if torch_cuda else "the torch build for older cards'"
    return failed("driver", f"NVIDIA driver {driver} is older than {whose} CUDA {cuda} needs "
                            f"({'.'.join(map(str, need))})",
                  f"update the NVIDIA driver to {'.'.join(map(str, need))} or newer, then reboot")


def check_cuda_devices(facts: TorchFacts, gpus: list[GpuInfo]) -> Check | None:
    """A CUDA build of torch should see every GPU NVML sees; None when there is nothing to compare."""
    if not gpus or facts.error is not None or not facts.cuda:
        return None
    if facts.device_count >= len(gpus):
        return passed("cuda", f"torch sees all {len(gpus)} GPU(s)")
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    why = f"CUDA_VISIBLE_DEVICES={hidden!r} hides them" if hidden is not None else \
        f"the driver may be too old for CUDA {facts.cuda}, or the card in a bad state"
    return failed("cuda", f"torch (CUDA {facts.cuda}) sees {facts.device_count} of the {len(gpus)} GPU(s) NVML sees",
                  f"{why}: check `nvidia-smi` and `python -c 'import torch; torch.cuda.init()'`")


# --- this PC ---

def check_disk(path: str, free_bytes: int, total_bytes: int, min_free: int = MIN_FREE_DISK,
               max_used: float = RAY_DISK_LIMIT) -> Check:
    name = f"disk {path}"
    used = 1 - free_bytes / total_bytes if total_bytes else 1.0
    detail = f"{free_bytes / GIB:.1f} GiB free of {total_bytes / GIB:.1f} GiB"
    if free_bytes < min_free:
        return failed(name, f"{detail}; salvage needs {min_free / GIB:.0f} GiB",
                      f"free space on {path} (Ray keeps its logs and spilled objects in /tmp, the agent its files in ~)")
    if used > max_used:
        return failed(name, f"{detail}: {used:.0%} full; Ray stops storing objects past {max_used:.0%}",
                      f"free space on {path} until it is under {max_used:.0%} full")
    return passed(name, detail)


def check_ram(available_bytes: int, total_bytes: int, min_available: int = MIN_AVAILABLE_RAM) -> Check:
    detail = f"{available_bytes / GIB:.1f} GiB available of {total_bytes / GIB:.1f} GiB"
    if available_bytes < min_available:
        return failed("ram", f"{detail}; a Ray node with torch needs {min_available / GIB:.0f} GiB",
                      "close programs, add memory, or join with --num-cpus 1 so fewer workers run at once")
    return passed("ram", detail)


# --- the cluster's token ---

def check_token_text(token: str, where: str, min_chars: int) -> Check:
    if len(token) < min_chars or not token.isascii() or not token.isprintable() or " " in token:
        return failed("token", f"{where} holds {len(token)} characters; a cluster token is one word of at least "
                               f"{min_chars} ASCII characters", "copy the whole token from the head's STATE_DIR/token")
    return passed("token", f"{where} holds a token")


def check_token_file(path: Path, min_chars: int) -> tuple[Check, str | None]:
    """The token file as `worker join` reads it: (verdict, the token when fit)."""
    try:
        mode = path.stat().st_mode
        token = path.read_text().strip()
    except OSError as err:
        return failed("token", f"cannot read {path} ({err.strerror or err})",
                      f"copy the head's STATE_DIR/token to {path} (mode 600)"), None
    if mode & 0o077:
        return failed("token", f"{path} is readable by other users (mode {mode & 0o777:o})", f"chmod 600 {path}"), None
    check = check_token_text(token, str(path), min_chars)
    return check, token if check.ok else None


def check_token_accepted(local: Check, status: int | None, reason: str = "") -> Check:
    """The final word on the token: the local check if it failed, else the head's answer
    (`status` of GET /api/cluster: 200, 401, or None when the head did not answer)."""
    if not local.ok:
        return local
    if status == 200:
        return passed("token", f"{local.detail}, and the head accepts it")
    if status == 401:
        return failed("token", f"the head refuses this token ({reason})",
                      "copy STATE_DIR/token again from this cluster's head (is it another cluster's?)")
    return failed("token", f"{local.detail}, not checked: the head did not answer", "see the head check")


# --- the head: reachable, its clock ---

def check_head(base: str, error: str | None, fix: str = "") -> Check:
    if error is None:
        return passed("head", f"salvage head at {base} answers")
    return failed("head", error, fix)


def check_port(name: str, address: str, error: str | None) -> Check:
    if error is None:
        return passed(name, f"{address} accepts connections")
    host, _, port = address.rpartition(":")
    return failed(name, f"cannot connect to {address} ({error})",
                  f"open port {port} on the head ({host}) to this PC in its firewall, and check the head is up")


def check_clock(offset_s: float, uncertainty_s: float, max_offset_s: float = MAX_CLOCK_OFFSET_S) -> Check:
    """`offset_s`: the head's clock minus this PC's, known to ±`uncertainty_s`."""
    side = "behind" if offset_s > 0 else "ahead of"
    detail = f"this PC's clock is {abs(offset_s):.2f} s {side} the head's (±{uncertainty_s:.2f} s)"
    if abs(offset_s) - uncertainty_s > max_offset_s:
        return failed("clock", f"{detail}; at most {max_offset_s:g} s is fine",
                      "turn on time sync on both machines: `timedatectl set-ntp true` (or install chrony)")
    return passed("clock", detail)


def not_checked(name: str, why: str) -> Check:
    return failed(name, f"not checked: {why}", "fix the head and token checks first")


# --- gathering the facts ---

@dataclass
class HeadAnswer:
    base: str = ""
    error: str | None = None  # the head check's failure
    fix: str = ""
    cluster: dict | None = None  # GET /api/cluster
    cluster_status: int | None = None
    cluster_reason: str = ""
    clock: tuple[float, float] | None = None  # (offset, uncertainty)


def ask_head(host: str, port: int, token: str | None, ca_fingerprint: str | None,
             timeout: float = HEAD_TIMEOUT_S) -> HeadAnswer:
    """GET /api/health (open: is it a salvage head, and its Date header) and, with a
    token, GET /api/cluster (versions, time, Ray's address)."""
    answer = HeadAnswer(base=f"{'https' if ca_fingerprint else 'http'}://{host}:{port}")
    unreachable_fix = (f"start the head (`salvage cluster up`), open port {port} on it to this PC, "
                       "and check HOST:PORT against its join line")
    ca_file = None
    try:
        if ca_fingerprint:
            try:
                pem = fetch_ca(host, port, ca_fingerprint, timeout=timeout)
            except HeadError as err:
                answer.error, answer.fix = str(err), "copy --ca-fingerprint from this head's join line"
                return answer
            except HeadUnreachable as err:
                answer.error, answer.fix = str(err), unreachable_fix
                return answer
            with tempfile.NamedTemporaryFile("w", suffix=".pem", delete=False) as f:
                f.write(pem)
                ca_file = Path(f.name)
        client = HeadClient(host, port, token, timeout=timeout, ca_file=ca_file)
        t0 = time.time()
        try:
            with urllib.request.urlopen(answer.base + "/api/health", timeout=timeout, context=client.context) as resp:
                t1 = time.time()
                body = json.loads(resp.read() or b"{}")
                date = resp.headers.get("Date")
        except urllib.error.HTTPError as err:
            answer.error = f"something answers at {answer.base}, but not a salvage head (HTTP {err.code} for /api/health)"
            answer.fix = "check HOST:PORT against the head's join line"
            return answer
        except (urllib.error.URLError, OSError, ValueError) as err:
            if not ca_fingerprint and speaks_tls(host, port, timeout):
                answer.error = f"the head at {host}:{port} speaks HTTPS: it is a head on the LAN"
                answer.fix = "pass --ca-fingerprint sha256:... from its join line (`salvage cluster up` prints it)"
                return answer
            answer.error = f"no salvage head answers at {answer.base} ({getattr(err, 'reason', err)})"
            answer.fix = unreachable_fix
            return answer
        if not isinstance(body, dict) or body.get("ok") is not True:
            answer.error = f"something answers at {answer.base}, but not a salvage head"
            answer.fix = "check HOST:PORT against the head's join line"
            return answer
        if date:
            try:  # whole seconds: the head's time lies in [Date, Date + 1)
                head_time = email.utils.parsedate_to_datetime(date).timestamp() + 0.5
                answer.clock = (head_time - (t0 + t1) / 2, 0.5 + (t1 - t0) / 2)
            except (TypeError, ValueError):
                pass
        if token is None:
            return answer
        t0 = time.time()
        try:
            answer.cluster = client.get("/api/cluster")
            answer.cluster_status = 200
        except HeadError as err:
            answer.cluster_status, answer.cluster_reason = err.status, str(err)
            if err.status != 401:
                answer.error, answer.fix = f"the head refuses GET /api/cluster: {err}", "see the head's log"
            return answer
        except HeadUnreachable as err:
            answer.error, answer.fix = f"the head stopped answering ({err})", unreachable_fix
            return answer
        t1 = time.time()
        if isinstance(answer.cluster.get("time"), (int, float)):
            answer.clock = (answer.cluster["time"] - (t0 + t1) / 2, (t1 - t0) / 2)
        return answer
    finally:
        if ca_file is not None:
            ca_file.unlink(missing_ok=True)


def speaks_tls(host: str, port: int, timeout: float = HEAD_TIMEOUT_S) -> bool:
    """Whether HOST:PORT completes a TLS handshake (certificate unchecked: this only
    tells a LAN head from no head; nothing is sent)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, \
                context.wrap_socket(raw, server_hostname=host):
            return True
    except (OSError, ValueError):
        return False


def tcp_error(address: str, timeout: float = HEAD_TIMEOUT_S) -> str | None:
    """None if HOST:PORT accepts a TCP connection, else why not."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return None
    except (OSError, ValueError) as err:
        return getattr(err, "strerror", None) or str(err)


def nvidia_on_bus() -> bool:
    """An NVIDIA display or 3D controller on the PCI bus (vendor 0x10de, class 0x03xxxx)."""
    for dev in Path("/sys/bus/pci/devices").glob("*"):
        try:
            if (dev / "vendor").read_text().strip() == "0x10de" and (dev / "class").read_text().startswith("0x03"):
                return True
        except OSError:
            continue
    return False


def probe_gpus(simulate: str | None) -> tuple[list[GpuInfo], str | None, str | None]:
    """(GPUs, driver version, NVML's error) through the agent's own reader."""
    reader = GpuReader(open_nvml(simulate))
    reader.start()
    gpus = reader.probe()
    if not reader.handles and reader.notes:
        return [], None, reader.notes[0]
    try:
        driver = reader.nvml.nvmlSystemGetDriverVersion()
    except reader.nvml.NVMLError as err:
        return gpus, None, str(err)
    return gpus, driver.decode() if isinstance(driver, bytes) else str(driver), None


def installed(distribution: str) -> str | None:
    try:
        return package_version(distribution)
    except PackageNotFoundError:
        return None


def disk_checks() -> list[Check]:
    """The agent's home and Ray's temp dir, once per filesystem."""
    checks, seen = [], set()
    for path in (disk_path(), tempfile.gettempdir()):
        try:
            dev = os.stat(path).st_dev
            if dev in seen:
                continue
            seen.add(dev)
            usage = psutil.disk_usage(path)
        except OSError as err:
            checks.append(failed(f"disk {path}", f"cannot read {path} ({err.strerror or err})", f"create {path}"))
            continue
        checks.append(check_disk(path, usage.free, usage.total))
    return checks


def diagnose(address: str, *, token: str | None, token_check: Check, ca_fingerprint: str | None = None,
             simulate: str | None = None, arch_list: list[str] | None = None,
             python_match: str = "patch") -> list[Check]:
    """Every check, in the order a person fixes them. `token_check` is the local verdict
    on the token (`check_token_file`); `arch_list` replaces torch's own (to check a
    planned build, and in tests)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"address: expected HOST:PORT of the head, got {address!r}")
    answer = ask_head(host, int(port), token, ca_fingerprint)
    checks = [check_head(answer.base, answer.error, answer.fix),
              check_token_accepted(token_check, answer.cluster_status, answer.cluster_reason)]
    cluster = answer.cluster if isinstance(answer.cluster, dict) else None
    why = "the head did not answer" if answer.error else "needs a token the head accepts"
    versions = cluster.get("versions") if cluster else None
    if isinstance(versions, dict):
        checks += [check_python(platform.python_version(), str(versions.get("python")), python_match),
                   check_ray(installed("ray"), str(versions.get("ray"))),
                   check_salvage(installed("salvage-cluster"), str(versions.get("salvage")))]
    else:
        missing = "this head does not tell its versions (an older salvage?)" if cluster else why
        checks += [not_checked(name, missing) for name in ("python", "ray", "salvage")]
    if cluster and isinstance(cluster.get("ray_address"), str):
        checks.append(check_port("ray port", cluster["ray_address"], tcp_error(cluster["ray_address"])))
    else:
        checks.append(not_checked("ray port", why))
    checks.append(check_clock(*answer.clock) if answer.clock else not_checked("clock", why))

    facts = torch_facts()
    checks.append(check_torch(facts))
    gpus, driver, nvml_error = probe_gpus(simulate)
    real = simulate is None
    checks.append(check_driver(driver, nvml_error, real and nvidia_on_bus(), facts.cuda))
    if real and (cuda := check_cuda_devices(facts, gpus)) is not None:
        checks.append(cuda)
    arches = arch_list if arch_list is not None else facts.arch_list
    checks += [check_gpu(g, arches) for g in gpus]
    checks += disk_checks()
    memory = psutil.virtual_memory()
    checks.append(check_ram(memory.available, memory.total))
    return checks
