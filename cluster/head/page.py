"""The head's status page at `/`: hosts and their GPUs, training jobs with
their loss curves, the science queue, and links to the other dashboards.

It reads only what the API's routes return (its collaborators are those
routes' handlers, see `StatusPage`; what a GPU is doing now comes with the
status, from the agents' heartbeats), and draws everything on the server: one
HTML document with its CSS and a few lines of JavaScript inline, and the
charts as inline SVG (`svg`). Nothing is fetched from anywhere else; a
Content-Security-Policy in the page makes the browser hold to that too.
The script fetches `/fragment` every few seconds and swaps it in, so the page
refreshes without reloading (and, without JavaScript, a <noscript> refresh
reloads it).

Why plain string building and not Jinja2: Jinja2 is on this machine only
because torch depends on it (salvage does not declare it, Ray does not need
it), and the page's logic (thresholds, shares, bars) is Python either way.
What a template engine would add here is autoescaping; `h()` below does that
in a few lines: every value formatted into markup is escaped unless it is
already `Html`, so a host name like `<script>` can only ever show as text.
Host names, GPU names, notes, worker keys, errors and app names all come
from PCs and are treated as untrusted.
"""
from __future__ import annotations

import base64
import hashlib
import html
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from . import svg
from .boincreport import summary as boinc_summary

CONTENT_TYPE = "text/html; charset=utf-8"
HOT_C = 85.0  # as the SalvageGPUHot alert and the Grafana GPU panels' red
WARM_C = 80.0  # the panels' amber
THERMAL = ("sw_thermal", "hw_thermal")
RECENT_JOBS = 5  # finished jobs shown beside the queued and running ones
MAX_CHARTS = 6  # loss curves drawn per refresh (each reads the job's log)
RECENT_BATCHES = 5  # finished science batches shown beside the running ones
MAX_LOG_READS = 10  # log pages read per job per refresh while catching up
STATE_ORDER = {"alive": 0, "lost": 1, "left": 2}
LINK_LABELS = {"metrics": "Prometheus metrics", "ray_dashboard": "Ray dashboard", "grafana": "Grafana",
               "prometheus": "Prometheus"}


class Html(str):
    """Markup that is safe as it is: built by `h()` or by `svg`."""


def _safe(value):
    if isinstance(value, Html):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value  # numbers cannot carry markup, and format specs need them as numbers
    return html.escape(str(value), quote=True)


def h(template: str, *args, **kwargs) -> Html:
    """`template.format(...)` with every argument escaped unless it is Html."""
    return Html(template.format(*map(_safe, args), **{k: _safe(v) for k, v in kwargs.items()}))


def join(parts: Iterable, sep: str = "") -> Html:
    return Html(sep.join(_safe(p) for p in parts))


STYLE = """
:root{--bg:#f6f7f9;--card:#fff;--ink:#1d2330;--dim:#6b7385;--line:#dde1e8;--ok:#2e9d5b;--warm:#e0a100;
--hot:#d33a2c;--lost:#b33;--train:#2f6fdf;--val:#e07b00;--track:#e8ebf0;--accent:#2f6fdf}
@media (prefers-color-scheme:dark){:root{--bg:#14171d;--card:#1d2129;--ink:#e6e9ef;--dim:#9099ab;
--line:#2e3440;--track:#2a2f39}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif}
header.top{display:flex;flex-wrap:wrap;gap:.5rem 1.5rem;align-items:baseline;padding:.8rem 1.2rem;
background:var(--card);border-bottom:1px solid var(--line)}
header.top h1{font-size:1.2rem;margin:0}
header.top nav a{margin-right:1rem}
#updated{color:var(--dim);margin-left:auto;font-size:.85rem}
#updated.stale{color:var(--hot);font-weight:600}
main{padding:1rem 1.2rem;max-width:1600px}
section{margin-bottom:1.6rem}
h2{font-size:1.05rem;margin:.2rem 0 .6rem}
h2 small,h3 small{color:var(--dim);font-weight:400;margin-left:.5rem}
h3{font-size:.98rem;margin:0}
a{color:var(--accent)}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(400px,1fr));gap:.8rem}
.card{background:var(--card);border:1px solid var(--line);border-radius:6px;padding:.6rem .8rem}
.card>header{display:flex;flex-wrap:wrap;gap:.4rem;align-items:baseline;margin-bottom:.3rem}
.host.state-lost{border-color:var(--lost)}
.host.state-left{opacity:.55}
.meta,.note,.runs{color:var(--dim);font-size:.85rem;margin:.2rem 0}
.runs b{color:var(--ink);font-weight:500}
.reason{margin:.2rem 0;font-size:.85rem}
.badge{display:inline-block;padding:0 .45rem;border-radius:9px;font-size:.78rem;background:var(--track)}
.badge.alive,.badge.running,.badge.done{background:var(--ok);color:#fff}
.badge.lost,.badge.failed,.badge.hot{background:var(--hot);color:#fff}
.badge.warm,.badge.paused,.badge.drained,.badge.queued{background:var(--warm);color:#000}
table{border-collapse:collapse;width:100%}
td,th{padding:.15rem .4rem .15rem 0;text-align:left;vertical-align:middle;font-size:.85rem}
th{color:var(--dim);font-weight:500}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.gpu{padding:.3rem 0;border-top:1px solid var(--line)}
.gpu.hot{background:linear-gradient(90deg,rgba(211,58,44,.12),transparent 70%)}
.gpu.lost .gpu-name{color:var(--lost)}
.meters{display:grid;grid-template-columns:repeat(3,minmax(0,1fr));gap:.6rem;margin-top:.15rem}
.meter{display:flex;align-items:center;gap:.3rem;font-size:.8rem;white-space:nowrap;min-width:0}
.meter .label{color:var(--dim);flex:none}
.meter svg.bar{flex:1 1 auto;min-width:1.5rem;width:100%}
.meter .value{font-variant-numeric:tabular-nums;flex:none}
.host.has-hot{border-left:4px solid var(--hot)}
.card{min-width:0}
section>.card+.card{margin-top:.8rem}
table.batches,table.credit{width:auto}
table.batches td,table.batches th,table.credit td{padding-right:1.4rem}
svg.bar,svg.stacked{vertical-align:middle}
svg .track{fill:var(--track)}
svg.bar .fill{fill:var(--accent)}
svg.bar.ok .fill{fill:var(--ok)}svg.bar.warm .fill{fill:var(--warm)}svg.bar.hot .fill{fill:var(--hot)}
svg .part.done,svg .part.valid{fill:var(--ok)}svg .part.in_progress{fill:var(--accent)}
svg .part.unsent{fill:#9aa3b5}svg .part.error,svg .part.invalid{fill:var(--hot)}
svg.chart .plot{fill:none;stroke:var(--line)}
svg.chart .grid{stroke:var(--line);stroke-dasharray:2 3}
svg.chart text{fill:var(--dim);font-size:10px}
svg.chart .curve{fill:none;stroke-width:1.6}
svg.chart .curve.train{stroke:var(--train)}svg.chart .curve.val{stroke:var(--val);stroke-dasharray:4 2}
svg.chart .dot.train{fill:var(--train)}svg.chart .dot.val{fill:var(--val)}
svg.chart text.legend.train{fill:var(--train)}svg.chart text.legend.val{fill:var(--val)}
.error{color:var(--hot)}
.empty{color:var(--dim)}
.legend-row span{margin-right:.8rem;font-size:.8rem;color:var(--dim)}
.legend-row .done{color:var(--ok)}.legend-row .in_progress{color:var(--accent)}.legend-row .unsent{color:#9aa3b5}
.legend-row .error{color:var(--hot)}
form.login{max-width:26rem;margin:3rem auto}
form.login input{width:100%;padding:.4rem;font:inherit;margin:.4rem 0}
form.login button{padding:.35rem 1rem;font:inherit}
""".strip()

# The refresh: fetch the fragment, swap it in, say when. A 401 means the
# login cookie is gone: reloading shows the login form.
SCRIPT = """
(function () {
  var live = document.getElementById("live"), stamp = document.getElementById("updated");
  var every = REFRESH_MS;
  function again() { setTimeout(tick, every); }
  function tick() {
    if (document.hidden) { again(); return; }
    fetch("/fragment", {cache: "no-store", credentials: "same-origin"}).then(function (r) {
      if (r.status === 401) { location.reload(); throw new Error("signed out"); }
      if (!r.ok) { throw new Error("HTTP " + r.status); }
      return r.text();
    }).then(function (text) {
      live.innerHTML = text;
      stamp.textContent = "updated " + new Date().toLocaleTimeString();
      stamp.className = "";
    }).catch(function (err) {
      stamp.textContent = "not updated: " + err.message;
      stamp.className = "stale";
    }).finally(again);
  }
  again();
})();
""".strip()


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def _policy(script: str | None) -> str:
    """Nothing from anywhere but this head: no other scripts, styles, images,
    frames or connections, and inline code only where its hash is listed."""
    scripts = _csp_hash(script) if script else "'none'"
    return (f"default-src 'none'; style-src {_csp_hash(STYLE)}; script-src {scripts}; "
            "connect-src 'self'; img-src data:; form-action 'self'; base-uri 'none'")


def _document(title: str, body: Html, script: str | None = None, refresh_s: float | None = None) -> bytes:
    noscript = (h('<noscript><meta http-equiv="refresh" content="{}"></noscript>', max(10, int(refresh_s * 4)))
                if refresh_s else "")
    out = h('<!doctype html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<meta http-equiv="Content-Security-Policy" content="{policy}">'
            '<link rel="icon" href="data:,">{noscript}<title>{title}</title><style>{style}</style></head>'
            '<body>{body}{script}</body></html>',
            policy=_policy(script), noscript=Html(noscript), title=title, style=Html(STYLE), body=body,
            script=Html(f"<script>{script}</script>") if script else Html(""))
    return out.encode()


# --- small formatters ---
def _gib(n: float | None) -> str:
    if n is None:
        return "?"
    g = n / 2**30
    return f"{g:.0f} GiB" if g >= 10 or abs(g - round(g)) < 0.05 else f"{g:.1f} GiB"


def _ago(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 90:
        return f"{s} s ago"
    if s < 90 * 60:
        return f"{s // 60} min ago"
    if s < 48 * 3600:
        return f"{s // 3600} h ago"
    return f"{s // 86400} days ago"


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s // 60 % 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s"


def _num(v, fmt: str = "{:,.0f}", none: str = "–") -> str:
    return none if v is None or (isinstance(v, float) and not math.isfinite(v)) else fmt.format(v)


def _credit_text(v: float) -> str:
    """Credit as people read it: a trivial app earns millionths of a cobblestone,
    which the bar beside it shows as a share; the figure need not."""
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 1:
        return f"{v:.1f}"
    return f"{v:.3f}" if v >= 0.001 else "< 0.001" if v > 0 else "0"


def _safe_href(url: str | None) -> str | None:
    """Links come from configuration, not PCs, but only web addresses make links."""
    if not url or not isinstance(url, str):
        return None
    return url if url.startswith(("/", "http://", "https://")) and not url.startswith("//") else None


def heat(temperature_c: float | None, throttle: Iterable[str] = ()) -> str:
    """'hot', 'warm' or 'ok' ('' when unknown): as the alerts and Grafana panels grade it."""
    if any(r in THERMAL for r in throttle) or (temperature_c is not None and temperature_c > HOT_C):
        return "hot"
    if temperature_c is None:
        return ""
    return "warm" if temperature_c > WARM_C else "ok"


@dataclass
class _Curve:
    """One job's loss curves and last figures, read from its log incrementally."""

    seq: int = 0
    train: dict[int, float] = field(default_factory=dict)  # iteration -> loss; a resumed attempt overwrites
    val: dict[int, float] = field(default_factory=dict)
    workers: list[dict] | None = None  # a pool job's last round, per worker
    eta_s: float | None = None

    def absorb(self, data: dict) -> None:
        it = data.get("iter")
        if not isinstance(it, (int, float)):
            return
        for key, series in (("train_loss", self.train), ("val_loss", self.val)):
            if isinstance(data.get(key), (int, float)):
                series[int(it)] = float(data[key])
        if isinstance(data.get("workers"), list):
            self.workers = [w for w in data["workers"] if isinstance(w, dict)]
        if "eta_s" in data:
            self.eta_s = data["eta_s"] if isinstance(data["eta_s"], (int, float)) else None


class StatusPage:
    """The status page, built from the API's handlers it reads:

    status() -> GET /api/status; train_list() -> POST /api/train/list;
    train_logs(job, since) -> POST /api/train/logs {"job": job, "since": since};
    science_status() -> POST /api/science/status {}; science_batch(batch) ->
    POST /api/science/status {"batch": batch}. `links` maps "metrics",
    "ray_dashboard", "grafana" (and any other name) to a URL, or None where not
    configured.

    The page is served from several HTTP threads at once; the only state it
    keeps is the jobs' curves, under a lock."""

    def __init__(self, *, status: Callable[[], dict], train_list: Callable[[], dict],
                 train_logs: Callable[[int, int], dict], science_status: Callable[[], dict],
                 science_batch: Callable[[int], dict], links: dict[str, str | None],
                 refresh_s: float = 5.0, clock: Callable[[], float] = time.time):
        self.status = status
        self.train_list = train_list
        self.train_logs = train_logs
        self.science_status = science_status
        self.science_batch = science_batch
        self.links = dict(links)
        self.refresh_s = refresh_s
        self.clock = clock
        self.script = SCRIPT.replace("REFRESH_MS", str(int(refresh_s * 1000)))
        self.curves: dict[int, _Curve] = {}
        self.curves_lock = threading.Lock()

    # --- the three things it serves ---
    def html(self) -> bytes:
        status, error = _call(self.status)
        head = (status or {}).get("head", "")
        body = h('<header class="top"><h1>salvage <small>head {head}</small></h1><nav>{links}</nav>'
                 '<span id="updated">updated {now}</span></header><main id="live">{live}</main>',
                 head=head, links=self._links(), now=time.strftime("%H:%M:%S", time.localtime(self.clock())),
                 live=self._fragment(status, error))
        return _document(f"salvage — {head}" if head else "salvage", body, self.script, self.refresh_s)

    def fragment(self) -> bytes:
        return self._fragment(*_call(self.status)).encode()

    def login_form(self, error: str | None = None) -> bytes:
        body = h('<form class="login card" method="post" action="/login">'
                 '<h1>salvage</h1><p>This cluster needs its token to show its status: the one '
                 '<code>salvage cluster up</code> printed (also in the state dir\'s <code>token</code> file).</p>'
                 '{error}<label for="token">Token</label>'
                 '<input id="token" name="token" type="password" autocomplete="off" required autofocus>'
                 '<button type="submit">Sign in</button></form>',
                 error=h('<p class="error" role="alert">{}</p>', error) if error else Html(""))
        return _document("salvage — sign in", body)

    # --- parts ---
    def _links(self) -> Html:
        out = []
        for name, url in self.links.items():
            href = _safe_href(url)
            if href:
                out.append(h('<a href="{}" rel="noopener noreferrer">{}</a>', href, LINK_LABELS.get(name, name)))
        return join(out)

    def _fragment(self, status: dict | None, status_error: str | None) -> Html:
        jobs, jobs_error = _call(self.train_list)
        job_list = (jobs or {}).get("jobs", [])
        curves = self._curves(self._charted(job_list)) if job_list else {}
        return join([
            self._hosts(status, status_error, job_list, curves),
            self._training(job_list, jobs_error, curves),
            self._science(),
            h('<p class="meta rendered">rendered {}</p>', time.strftime("%H:%M:%S", time.localtime(self.clock()))),
        ])

    # hosts
    def _hosts(self, status: dict | None, error: str | None, jobs: list[dict], curves: dict[int, _Curve]) -> Html:
        if status is None:
            return h('<section id="hosts"><h2>Hosts</h2><p class="error">unavailable: {}</p></section>', error)
        nodes = sorted(status.get("nodes", []), key=lambda n: (STATE_ORDER.get(n.get("state"), 3), str(n.get("name"))))
        pool_on = _pool_devices(jobs, curves)
        counts = {s: sum(n.get("state") == s for n in nodes) for s in ("alive", "lost", "left")}
        gpus = sum(len(n.get("gpus", [])) for n in nodes if n.get("state") == "alive")
        summary = join([h("{} {}", counts[s], s) for s in counts if counts[s] or s == "alive"], " · ")
        cards = [self._host(n, pool_on) for n in nodes]
        return h('<section id="hosts"><h2>Hosts <small>{summary} · {gpus} GPU{s} alive</small></h2>'
                 '<div class="cards">{cards}</div></section>',
                 summary=summary, gpus=gpus, s="" if gpus == 1 else "s",
                 cards=join(cards) if cards else Html('<p class="empty">No PC has joined yet: run '
                                                      '<code>salvage worker join</code> on one.</p>'))

    def _host(self, n: dict, pool_on: dict[str, list[str]]) -> Html:
        name, state = str(n.get("name", "?")), str(n.get("state", "?"))
        badges = [h('<span class="badge {0}">{0}</span>', state)]
        admin = n.get("admin_state")
        if admin and admin not in ("active", "normal", state):
            badges.append(h('<span class="badge {0}">{0}</span>', admin))
        if n.get("agent_state") in ("paused", "leaving"):
            badges.append(h('<span class="badge paused">agent {}</span>', n["agent_state"]))
        if n.get("simulated"):
            badges.append(Html('<span class="badge">simulated</span>'))
        cpu = n.get("cpu") or {}
        cores = cpu.get("cores", "?")
        meta = [h("{} · {} core{} · {} RAM", cpu.get("model") or "CPU", cores, "" if cores == 1 else "s",
                  _gib(cpu.get("ram_bytes"))),
                h("{} GFLOP/s", _num(n.get("speed_gflops"), "{:,.0f}"))]
        if state != "alive" and n.get("last_seen"):
            meta.append(h("last seen {}", _ago(self.clock() - n["last_seen"])))
        gpu_rows = [self._gpu(name, g, pool_on) for g in n.get("gpus", [])]
        hot = any(heat(t, th) == "hot" for t, _, _, th, _ in map(_live, n.get("gpus", [])))
        gpus = (h('<div class="gpus">{}</div>', join(gpu_rows)) if gpu_rows else Html('<p class="meta cpu-only">CPU only</p>'))
        running = n.get("running") or []
        runs = (h('<p class="runs">runs: <b>{}</b></p>', join(running, ", ")) if running
                else Html('<p class="runs">runs: nothing</p>') if state == "alive" else Html(""))
        reason = h('<p class="reason">{}</p>', n["reason"]) if n.get("reason") else Html("")
        notes = join(h('<p class="note">{}</p>', note) for note in n.get("notes") or [])
        boinc = h('<p class="runs boinc">BOINC: {}</p>', boinc_summary(n["boinc"])) if n.get("boinc") else Html("")
        return h('<article class="card host state-{state}{hot}" data-host="{name}"><header><h3>{name}</h3>{badges}'
                 '</header>{reason}<p class="meta">{meta}</p>{gpus}{runs}{boinc}{notes}</article>',
                 state=state, hot=" has-hot" if hot else "", name=name, badges=join(badges), reason=reason,
                 meta=join(meta, " · "), gpus=gpus, runs=runs, boinc=boinc, notes=notes)

    def _gpu(self, host: str, g: dict, pool_on: dict[str, list[str]]) -> Html:
        index = g.get("index", "?")
        temp, util, used, throttle, lost = _live(g)
        grade = heat(temp, throttle)
        vram = g.get("vram_bytes")
        badges = []
        if lost:
            badges.append(Html(' <span class="badge lost">lost</span>'))
        elif grade in ("hot", "warm"):
            limit = HOT_C if grade == "hot" else WARM_C
            why = "thermal throttling" if any(r in THERMAL for r in throttle) else f"above {limit:.0f} °C"
            badges.append(h(' <span class="badge {0}" title="{1}">{0}</span>', grade, why))
        on = pool_on.get(f"{host}/gpu{index}")
        temp_text = "–" if temp is None else f"{temp:.0f} °C"
        util_text = _num(util, "{:.0%}")
        mem_text = "–" if used is None else f"{used / 2**30:.1f}/{_gib(vram)}"
        meters = [("temp", svg.bar(None if temp is None else temp / 100, grade, temp_text, width=64), temp_text),
                  ("util", svg.bar(util, "util", f"{util_text} busy", width=64), util_text),
                  ("VRAM", svg.bar(used / vram if used is not None and vram else None, "mem", mem_text, width=64),
                   mem_text)]
        return h('<div class="gpu {grade}{lost}" data-gpu="{index}" data-temperature="{temp}">'
                 '<div class="gpu-name"><b>GPU {index}</b> {name} <small class="meta">{vram} · cc {cc}</small>'
                 '{badges}{on}</div><div class="meters">{meters}</div></div>',
                 grade=grade, lost=" lost" if lost else "", index=index, temp="" if temp is None else f"{temp:.0f}",
                 name=g.get("name", "?"), vram=_gib(vram), cc=g.get("compute_capability", "?"), badges=join(badges),
                 on=h(' <small class="runs">runs <b>{}</b></small>', join(on, ", ")) if on else Html(""),
                 meters=join(h('<span class="meter"><span class="label">{}</span>{}<span class="value">{}</span></span>',
                               label, Html(bar), text) for label, bar, text in meters))

    # training
    @staticmethod
    def _shown_jobs(jobs: list[dict]) -> list[dict]:
        live = [j for j in jobs if j.get("state") in ("queued", "running")]
        ended = [j for j in jobs if j.get("state") not in ("queued", "running")]
        return sorted(live + ended[-RECENT_JOBS:], key=lambda j: -j.get("id", 0))

    def _charted(self, jobs: list[dict]) -> list[int]:
        """The jobs whose curves are drawn: running ones first, then the latest others with progress."""
        shown = [j for j in self._shown_jobs(jobs) if j.get("iter") is not None or j.get("state") == "running"]
        shown.sort(key=lambda j: (j.get("state") != "running", -j.get("id", 0)))
        return [j["id"] for j in shown[:MAX_CHARTS]]

    def _curves(self, job_ids: list[int]) -> dict[int, _Curve]:
        with self.curves_lock:  # one reader per refresh: two would read the same log pages twice
            for job_id in job_ids:
                curve = self.curves.setdefault(job_id, _Curve())
                for _ in range(MAX_LOG_READS):
                    reply, _err = _call(self.train_logs, job_id, curve.seq)
                    entries = (reply or {}).get("entries") or []
                    for e in entries:
                        curve.seq = max(curve.seq, int(e.get("seq", 0)))
                        if e.get("kind") == "progress" and isinstance(e.get("data"), dict):
                            curve.absorb(e["data"])
                    if not entries:
                        break
            for job_id in [j for j in self.curves if j not in job_ids]:
                del self.curves[job_id]  # a job no longer drawn frees its points
            return {j: _Curve(c.seq, dict(c.train), dict(c.val), c.workers, c.eta_s)
                    for j, c in self.curves.items()}

    def _training(self, jobs: list[dict], error: str | None, curves: dict[int, _Curve]) -> Html:
        if error:
            return h('<section id="training"><h2>Training</h2><p class="error">unavailable: {}</p></section>', error)
        counts: dict[str, int] = {}
        for j in jobs:
            counts[j.get("state", "?")] = counts.get(j.get("state", "?"), 0) + 1
        summary = join((h("{} {}", n, s) for s, n in sorted(counts.items())), " · ") or "no jobs yet"
        shown = self._shown_jobs(jobs)
        cards = [self._job(j, curves.get(j["id"])) for j in shown]
        hidden = len(jobs) - len(shown)
        more = h('<p class="meta">{} older finished job{} not shown (<code>salvage train list</code>)</p>',
                 hidden, "" if hidden == 1 else "s") if hidden else Html("")
        return h('<section id="training"><h2>Training <small>{summary}</small></h2><div class="cards">{cards}</div>'
                 '{more}</section>', summary=summary, cards=join(cards), more=more)

    def _job(self, j: dict, curve: _Curve | None) -> Html:
        state = str(j.get("state", "?"))
        it, total = j.get("iter"), j.get("max_iters")
        frac = it / total if isinstance(it, (int, float)) and total else (1.0 if state == "done" else 0.0)
        where = (h("pool of {} worker{}", j.get("workers") or "?", "" if j.get("workers") == 1 else "s")
                 if j.get("pool") else h("on {}", j.get("host")) if j.get("host") else Html(""))
        figures = [h("{} / {} iters", _num(it, none="0"), _num(total))]
        for key, text, fmt in (("tokens_per_s", "{} tokens/s", "{:,.0f}"), ("train_loss", "train loss {}", "{:.3f}"),
                               ("val_loss", "val loss {}", "{:.3f}")):
            if j.get(key) is not None:  # a queued job has none of these yet
                figures.append(h(text, _num(j[key], fmt)))
        if j.get("pool") and j.get("round") is not None:
            figures.append(h("round {}", j["round"]))
        if state == "running" and curve and curve.eta_s is not None:
            figures.append(h("ETA {}", _duration(curve.eta_s)))
        if (j.get("attempt") or 0) > 1:
            figures.append(h("attempt {}", j["attempt"]))
        chart = Html("")
        workers = Html("")
        if curve is not None:
            chart = Html(svg.loss_chart({"train": sorted(curve.train.items()), "val": sorted(curve.val.items())},
                                        x_max=total, title=f"job {j.get('id')} loss"))
            if j.get("pool") and curve.workers:
                workers = self._workers(curve.workers)
        error = h('<p class="error">{}</p>', j["error"]) if j.get("error") else Html("")
        return h('<article class="card job state-{state}" data-job="{id}"><header><h3>job {id}</h3>'
                 '<span class="badge {state}">{state}</span><small class="meta">{preset} {where}</small></header>'
                 '<p class="progress">{bar} {pct}</p><p class="meta">{figures}</p>{chart}{workers}{error}</article>',
                 state=state, id=j.get("id", "?"), preset=j.get("preset") or "", where=where,
                 bar=Html(svg.bar(frac, "progress", f"{frac:.0%} done", width=220)), pct=f"{frac:.0%}",
                 figures=join(figures, " · "), chart=chart, workers=workers, error=error)

    @staticmethod
    def _workers(report: list[dict]) -> Html:
        """Each pool worker's share of the last round's steps, and its speed."""
        total = sum(w.get("steps") or 0 for w in report) or 1
        rows = [h('<tr class="worker"><td>{name}</td><td>{bar}</td><td class="num">{share:.0%}</td>'
                  '<td class="num">{steps} steps</td><td class="num">{rate} tok/s</td><td class="num">wait {wait} s</td></tr>',
                  name=w.get("worker", "?"), bar=Html(svg.bar((w.get("steps") or 0) / total, "share", "", width=90)),
                  share=(w.get("steps") or 0) / total, steps=_num(w.get("steps")), rate=_num(w.get("tokens_per_s")),
                  wait=_num(w.get("wait_s"), "{:.1f}"))
                for w in report]
        return h('<table class="workers"><tr><th>worker</th><th colspan="2">share of last round</th><th></th>'
                 '<th></th><th></th></tr>{}</table>', join(rows))

    # science
    def _science(self) -> Html:
        data, error = _call(self.science_status)
        if data is None:
            return h('<section id="science"><h2>Science</h2><p class="error">unavailable: {}</p></section>', error)
        batches = data.get("batches") or []
        live = [b for b in batches if not b.get("done")]
        shown = sorted(live + [b for b in batches if b.get("done")][-RECENT_BATCHES:], key=lambda b: -b.get("batch", 0))
        rows, rate_now = [], 0.0
        for b in shown:
            detail, _err = _call(self.science_batch, b["batch"])
            rate = _results_rate(detail, self.clock()) if detail else None
            if rate and not b.get("done"):
                rate_now += rate
            rows.append(self._batch(b, detail, rate))
        summary = h("{} running · {} done", len(live), len(batches) - len(live))
        if live:
            summary = h("{} · {} results/s", summary, _num(rate_now, "{:.2f}"))
        table = (h('<table class="batches"><tr><th>batch</th><th>app</th><th class="num">units</th><th>by state</th>'
                   '<th class="num">results/s</th><th class="num">ETA</th></tr>{}</table>', join(rows))
                 if rows else Html('<p class="empty">No science batch yet (<code>salvage science submit</code>).</p>'))
        legend = Html('<p class="legend-row"><span class="done">■ done</span><span class="in_progress">■ in progress'
                      '</span><span class="unsent">■ unsent</span><span class="error">■ error</span></p>') if rows else Html("")
        return h('<section id="science"><h2>Science <small>{summary}</small></h2><div class="card">{table}{legend}'
                 '</div>{credit}</section>', summary=summary, table=table, legend=legend,
                 credit=self._credit(data.get("credit_by_host") or {}, data.get("hosts") or []))

    @staticmethod
    def _batch(b: dict, detail: dict | None, rate: float | None) -> Html:
        wus = (detail or {}).get("wus") or {"total": b.get("wus"), "done": b.get("done_wus"), "error": b.get("error_wus")}
        total = wus.get("total") or 0
        parts = [(wus.get(k) or 0, k, f"{wus.get(k) or 0} {k.replace('_', ' ')}")
                 for k in ("done", "in_progress", "unsent", "error")]
        eta = (detail or {}).get("eta_seconds")
        return h('<tr class="batch" data-batch="{id}"><td>#{id}</td><td>{app} <small class="meta">{version}</small></td>'
                 '<td class="num">{done} / {total}</td><td>{bar}</td><td class="num">{rate}</td><td class="num">{eta}</td></tr>',
                 id=b.get("batch", "?"), app=b.get("app", "?"), version=b.get("version") or "",
                 done=(wus.get("done") or 0) + (wus.get("error") or 0), total=total, bar=Html(svg.stacked(parts)),
                 rate=_num(rate, "{:.2f}"), eta="done" if b.get("done") else _duration(eta) if eta is not None else "–")

    @staticmethod
    def _credit(credit: dict[str, float], stats: list[dict]) -> Html:
        if not credit and not stats:
            return Html("")
        valid: dict[str, list[int]] = {}
        for s in stats:
            v = valid.setdefault(str(s.get("host")), [0, 0])
            v[0] += s.get("valid") or 0
            v[1] += s.get("invalid") or 0
        hosts = sorted(set(credit) | set(valid), key=lambda name: (-credit.get(name, 0.0), name))
        top = max(credit.values(), default=0.0) or 1.0
        rows = [h('<tr class="credit-row" data-host="{host}"><td>{host}</td><td>{bar}</td><td class="num">{credit}</td>'
                  '<td class="num">{valid} valid · {invalid} invalid</td></tr>', host=name,
                  bar=Html(svg.bar(credit.get(name, 0.0) / top, "credit", "", width=160)),
                  credit=_credit_text(credit.get(name, 0.0)), valid=valid.get(name, [0, 0])[0],
                  invalid=valid.get(name, [0, 0])[1])
                for name in hosts]
        return h('<div class="card"><h3>Credit per host <small>cobblestones</small></h3>'
                 '<table class="credit">{}</table></div>', join(rows))


def _live(g: dict) -> tuple:
    """A GPU's temperature, utilization, VRAM used, throttle reasons and lost flag,
    as its agent's last heartbeat told the head (absent: not known yet)."""
    return (g.get("temperature_c"), g.get("utilization"), g.get("memory_used_bytes"), g.get("throttle") or [],
            bool(g.get("lost")))


def _call(fn: Callable, *args):
    """(result, None), or (None, one line) when a part is unavailable: the rest still renders."""
    try:
        return fn(*args), None
    except Exception as err:
        return None, str(err).splitlines()[0] if str(err) else type(err).__name__


def _pool_devices(jobs: list[dict], curves: dict[int, _Curve]) -> dict[str, list[str]]:
    """'host/gpuN' -> the running pool jobs with a worker there (from their last round)."""
    out: dict[str, list[str]] = {}
    for j in jobs:
        curve = curves.get(j.get("id"))
        if j.get("pool") and j.get("state") == "running" and curve and curve.workers:
            for w in curve.workers:
                out.setdefault(str(w.get("worker")), []).append(f"pool job {j['id']}")
    return out


def _results_rate(detail: dict, now: float) -> float | None:
    """Results received per second over the batch's run so far (or its whole run)."""
    started = detail.get("started")
    if not started:
        return None
    results = detail.get("results") or {}
    received = (results.get("success") or 0) + (results.get("client_error") or 0)
    elapsed = (detail.get("finished") or now) - started
    return received / elapsed if elapsed > 0 else None
