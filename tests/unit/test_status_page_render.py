"""The head's status page rendered from plain dicts shaped like the API's
replies (no Ray, no HTTP): hosts and GPU heat, loss curves, pool shares,
the science queue, escaping of what PCs send, and no asset from elsewhere."""
import re
from html.parser import HTMLParser

import pytest

from cluster.head import svg
from cluster.head.page import StatusPage, heat

NOW = 1_700_000_000.0
EVIL = "<script>alert('pc')</script>"
LINKS = {"metrics": "/metrics", "ray_dashboard": "http://127.0.0.2:8265", "grafana": "https://grafana.example:3000/d/x"}


def gpu(index, name, vram_gib, cc="8.6", lost=False, **live):
    """A GPU as /api/status shows it; `live` is what its agent's last heartbeat said."""
    return {"index": index, "name": name, "vram_bytes": vram_gib * 2**30, "compute_capability": cc,
            "uuid": f"GPU-{index}", "speed_gflops": 900.0, "lost": lost, **live}


def host(name, state="alive", gpus=(), running=(), metrics=None, **extra):
    return {"name": name, "state": state, "cpu_only": not gpus, "speed_gflops": 900.0,
            "cpu": {"model": "Core i5", "cores": 4, "ram_bytes": 16 * 2**30},
            "gpus": list(gpus), "running": list(running), "ray_labels": {}, "metrics": metrics,
            "last_seen": NOW - 300, "simulated": True, "notes": [], **extra}


STATUS = {
    "head": "127.0.0.2:8470", "ray": "127.0.0.2:6379",
    "nodes": [
        host("cool", gpus=[gpu(0, "RTX 3060", 12, temperature_c=55.0, utilization=0.4,
                               memory_used_bytes=3 * 2**30, throttle=[])],
             running=["train job 1"], metrics="127.0.0.2:9101", agent_state="busy"),
        host("hot", gpus=[gpu(0, "GTX 1070", 8, "6.1", temperature_c=91.0, utilization=0.97,
                              memory_used_bytes=2**30, throttle=["sw_thermal"])],
             metrics="127.0.0.2:9102", agent_state="busy"),
        host("office", running=["science (2 tasks)"], boinc={
            "kind": "boinc", "connected": True, "note": "", "modes": {"cpu": "never", "gpu": "auto"},
            "owner_modes": {"cpu": "auto", "gpu": "auto"}, "held": {"cpu": {"reason": "work", "detail": "cpu busy"}},
            "projects": [{"url": "https://boinc.bakerlab.org/rosetta/", "name": "Rosetta@home", "credit": 10.0}],
            "tasks": {"running": 0}, "attaches": {}}),
        host("gone", state="lost", gpus=[gpu(0, "GTX 1060", 3, "6.1")]),
        host(EVIL, gpus=[gpu(0, "<img src=x onerror=alert(1)>", 4)], notes=["<b>simulated</b> & odd"]),
        host("resting", admin_state="drained", reason="GPU 0 lost twice in an hour"),
    ],
}
JOBS = {"jobs": [
    {"id": 1, "state": "running", "preset": "shakespeare-char-cpu", "host": "cool", "attempt": 1, "iter": 40,
     "max_iters": 100, "pool": False, "round": None, "workers": None, "train_loss": 2.5, "val_loss": 2.6,
     "tokens_per_s": 12345.0, "error": None, "created_at": NOW - 60, "has_checkpoint": True},
    {"id": 2, "state": "running", "preset": "tiny", "host": "pool", "attempt": 1, "iter": 30, "max_iters": 300,
     "pool": True, "round": 3, "workers": 2, "train_loss": 3.1, "val_loss": None, "tokens_per_s": 5000.0,
     "error": None, "created_at": NOW - 50, "has_checkpoint": False},
    {"id": 3, "state": "failed", "preset": "tiny", "host": None, "attempt": 1, "iter": None, "max_iters": 100,
     "pool": False, "round": None, "workers": None, "train_loss": None, "val_loss": None, "tokens_per_s": None,
     "error": "data: " + EVIL, "created_at": NOW - 40, "has_checkpoint": False},
]}


def progress(seq, **data):
    return {"seq": seq, "t": NOW, "kind": "progress", "data": data}


LOGS = {
    1: [{"seq": 1, "t": NOW, "kind": "log", "data": "placed on cool (GPU 0, 900 GFLOP/s), attempt 1"},
        progress(2, iter=10, train_loss=4.0, max_iters=100, tokens_per_s=1.0, eta_s=50.0),
        progress(3, iter=20, train_loss=3.2, val_loss=3.3, max_iters=100, eta_s=40.0),
        progress(4, iter=30, train_loss=2.8, max_iters=100, eta_s=30.0),
        progress(5, iter=40, train_loss=2.5, val_loss=2.6, max_iters=100, eta_s=20.0)],
    2: [progress(1, round=1, iter=10, train_loss=4.1, workers=[]),
        progress(2, round=3, iter=30, train_loss=3.1, workers=[
            {"worker": "cool/gpu0", "steps": 30, "tokens_per_s": 4000, "wait_s": 0.1},
            {"worker": "office/cpu", "steps": 10, "tokens_per_s": 1000, "wait_s": 0.4}])],
    3: [],
}
SCIENCE = {"batches": [
    {"batch": 1, "app": "noop", "version": 1, "wus": 10, "done_wus": 10, "error_wus": 0, "created": NOW - 100,
     "finished": NOW - 50, "done": True},
    {"batch": 2, "app": "lj-md", "version": 2, "wus": 40, "done_wus": 8, "error_wus": 2, "created": NOW - 40,
     "finished": None, "done": False}],
    "credit_by_host": {"office": 12.5, EVIL: 2.0, "cool": 0.0042, "hot": 3.7e-08}, "credit_by_app": {"noop": 14.5},
    "hosts": [{"host": "office", "app": "noop", "consecutive_valid": 10, "trusted": True, "success": 10,
               "client_error": 0, "no_reply": 0, "valid": 10, "invalid": 0, "credit": 12.5}]}


def batch_status(batch):
    b = next(b for b in SCIENCE["batches"] if b["batch"] == batch)
    done = b["done"]
    return {"batch": batch, "app": b["app"], "version": b["version"],
            "wus": {"total": b["wus"], "done": b["done_wus"], "error": b["error_wus"],
                    "in_progress": 0 if done else 6, "unsent": 0 if done else 24},
            "wu_errors": {}, "results": {"unsent": 0, "in_progress": 6, "success": 20, "client_error": 0,
                                         "no_reply": 0, "aborted": 0, "valid": 20, "invalid": 0},
            "credit_by_host": {}, "created": b["created"], "started": NOW - 40 if not done else NOW - 100,
            "finished": b["finished"], "eta_seconds": 0.0 if done else 90.0, "done": done, "output": "/x"}


def train_logs(job, since):
    entries = [e for e in LOGS[job] if e["seq"] > since]
    return {"state": "running", "error": None, "host": None, "max_iters": 100, "entries": entries}


def make_page(**overrides):
    parts = dict(status=lambda: STATUS, train_list=lambda: JOBS, train_logs=train_logs,
                 science_status=lambda: SCIENCE, science_batch=batch_status, links=LINKS, clock=lambda: NOW)
    parts.update(overrides)
    return StatusPage(**parts)


class Tree(HTMLParser):
    """Every start tag with its attributes, and the text, of a document."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def find(self, tag, **attrs):
        return [a for t, a in self.tags if t == tag and all(
            v in (a.get(k.rstrip("_")) or "").split() if k.endswith("_") else a.get(k) == v for k, v in attrs.items())]


@pytest.fixture
def page():
    return make_page()


@pytest.fixture
def doc(page):
    return page.html().decode()


def test_the_page_shows_every_host_with_its_state(doc):
    tree = Tree(doc)
    hosts = {a["data-host"]: a["class"] for a in tree.find("article", class_="host")}
    assert set(hosts) == {"cool", "hot", "office", "gone", EVIL, "resting"}
    assert "state-lost" in hosts["gone"] and "state-alive" in hosts["cool"]
    assert "drained" in doc and "GPU 0 lost twice in an hour" in doc  # admin state and reason when present
    assert "CPU only" in doc and "last seen 5 min ago" in doc


def test_a_pc_that_lends_its_idle_devices_to_boinc_says_what_salvage_holds(doc):
    office = doc[doc.index('data-host="office"'):]
    office = office[:office.index("</article>")]
    assert "BOINC: 1 project, 0 running; CPU held (cpu busy); GPU lent" in office
    cool = doc[doc.index('data-host="cool"'):]
    assert "BOINC" not in cool[:cool.index("</article>")]  # its agent manages no BOINC client


def test_a_hot_gpu_shows_hot_and_a_cool_one_does_not(doc):
    rows = {a["data-temperature"]: a["class"].split() for a in Tree(doc).find("div", class_="gpu")
            if a["data-temperature"]}
    assert "hot" in rows["91"] and "hot" not in rows["55"] and "ok" in rows["55"]
    assert "91 °C" in doc and "97%" in doc
    assert re.search(r'<span class="badge hot"[^>]*>hot</span>', doc)


def test_heat_grades_as_the_alerts_do():
    assert heat(86) == "hot" and heat(85) == "warm" and heat(81) == "warm" and heat(60) == "ok"
    assert heat(70, ["sw_thermal"]) == "hot" and heat(70, ["power_cap"]) == "ok" and heat(None) == ""


def test_readings_in_the_status_win_over_the_exporters():
    status = {"head": "h", "nodes": [host("hot", gpus=[{**gpu(0, "GTX 1070", 8), "temperature_c": 40.0}],
                                          metrics="127.0.0.2:9102")]}
    doc = make_page(status=lambda: status).html().decode()
    assert 'data-temperature="40"' in doc and "91 °C" not in doc


def test_running_work_shows_on_its_host_and_pool_workers_on_their_gpu(doc):
    assert "train job 1" in doc and "science (2 tasks)" in doc
    cool = doc[doc.index('data-host="cool"'):doc.index('data-host="hot"')]
    assert re.search(r"runs <b>pool job 2</b>", cool)


def test_the_loss_curve_has_points(doc):
    tree = Tree(doc)
    charts = [a for a in tree.find("svg", class_="loss")]
    assert len(charts) == 2  # the two running jobs; the failed one reported nothing
    job1 = doc[doc.index('data-job="1"'):]
    train = re.search(r'<polyline class="curve train" points="([^"]+)"', job1)[1].split()
    val = re.search(r'<polyline class="curve val" points="([^"]+)"', job1)[1].split()
    assert len(train) == 4 and len(val) == 2
    xs = [float(p.split(",")[0]) for p in train]
    assert xs == sorted(xs)
    ys = [float(p.split(",")[1]) for p in train]
    assert ys[-1] > ys[0]  # the loss falls, so the curve goes down the picture (SVG y grows downwards)
    assert "12,345 tokens/s" in job1 and "40 / 100 iters" in job1 and "ETA 0m20s" in job1


def test_curves_are_read_incrementally_and_keep_all_points():
    calls = []

    def logs(job, since):
        calls.append((job, since))
        return train_logs(job, since)

    page = make_page(train_logs=logs)
    page.fragment()
    first = list(calls)
    calls.clear()
    page.fragment()
    assert (1, 0) in first and (1, 5) in calls and (1, 0) not in calls
    assert len(page.curves[1].train) == 4


def test_a_resumed_attempt_overwrites_the_iterations_it_repeats():
    page = make_page()
    curve = page._curves([1])[1]
    curve_live = page.curves[1]
    curve_live.absorb({"iter": 30, "train_loss": 2.7})
    assert sorted(page.curves[1].train) == [10, 20, 30, 40] and page.curves[1].train[30] == 2.7
    assert curve.train[30] == 2.8  # what was drawn is a copy, not the live dict


def test_a_pool_job_shows_each_workers_share(doc):
    job2 = doc[doc.index('data-job="2"'):doc.index('data-job="1"')]
    assert "cool/gpu0" in job2 and "office/cpu" in job2
    assert re.search(r"cool/gpu0.*?75%", job2) and re.search(r"office/cpu.*?25%", job2)
    assert "pool of 2 workers" in job2 and "round 3" in job2


def test_the_science_queue_shows_units_by_state_rate_and_credit(doc):
    tree = Tree(doc)
    assert {a["data-batch"] for a in tree.find("tr", class_="batch")} == {"1", "2"}
    batch2 = doc[doc.index('data-batch="2"'):doc.index('data-batch="1"')]
    assert "10 / 40" in batch2 and "8 done" in batch2 and "24 unsent" in batch2 and "6 in progress" in batch2
    assert "0.50" in batch2  # 20 results in 40 s
    assert {a["data-host"] for a in tree.find("tr", class_="credit-row")} == {"office", EVIL, "cool", "hot"}
    assert "12.5" in doc and "10 valid" in doc and "0.004" in doc and "&lt; 0.001" in doc and "e-08" not in doc
    assert "1 running · 1 done · 0.50 results/s" in doc


def test_what_pcs_send_is_escaped_everywhere(doc):
    tree = Tree(doc)
    scripts = [t for t, _ in tree.tags if t == "script"]
    assert len(scripts) == 1  # only the page's own refresh script
    assert EVIL not in doc and "<img src=x" not in doc and "<b>simulated</b>" not in doc
    assert "&lt;script&gt;alert(&#x27;pc&#x27;)&lt;/script&gt;" in doc
    assert EVIL in "".join(tree.text)  # shown, as text
    assert not [a for _, a in tree.tags if any(k.startswith("on") for k in a)]


def test_the_fragment_refreshes_itself_with_a_few_lines_of_plain_javascript(page, doc):
    script = re.search(r"<script>(.*?)</script>", doc, re.S)[1]
    assert 'fetch("/fragment"' in script and "innerHTML" in script and "setTimeout" in script
    assert len(script.splitlines()) < 30
    fragment = page.fragment().decode()
    assert "<html" not in fragment and "<script" not in fragment
    assert 'id="hosts"' in fragment and 'id="training"' in fragment and 'id="science"' in fragment
    assert '<main id="live">' in doc


def test_no_asset_comes_from_anywhere_but_the_head(doc):
    urls = re.findall(r'(?:src|href|action)\s*=\s*["\']?([^"\'\s>]+)', doc) + re.findall(r"url\(([^)]*)\)", doc)
    assert re.findall(r"@import", doc) == []
    external = [u for u in urls if re.match(r"(https?:)?//", u)]
    assert sorted(external) == sorted(u for u in LINKS.values() if u.startswith("http"))
    tree = Tree(doc)
    assert [a for a in tree.find("a") if a["href"].startswith("http")]  # the configured links are there
    assert not tree.find("link", rel="stylesheet") and all("src" not in a for t, a in tree.tags if t == "script")
    policy = tree.find("meta", **{"http-equiv": "Content-Security-Policy"})[0]["content"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy


def test_the_policy_hashes_match_the_inline_script_and_style(doc):
    import base64
    import hashlib

    policy = Tree(doc).find("meta", **{"http-equiv": "Content-Security-Policy"})[0]["content"]
    for tag in ("script", "style"):
        body = re.search(rf"<{tag}>(.*?)</{tag}>", doc, re.S)[1]
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in policy, tag


def test_links_show_only_where_configured():
    doc = make_page(links={"metrics": "/metrics", "ray_dashboard": "http://127.0.0.2:8265", "grafana": None,
                           "evil": "javascript:alert(1)"}).html().decode()
    assert "Grafana" not in doc and "javascript:" not in doc
    assert 'href="/metrics"' in doc and "Ray dashboard" in doc


def test_a_part_that_fails_leaves_the_rest_of_the_page():
    def broken():
        raise RuntimeError("database is locked")

    doc = make_page(science_status=broken).html().decode()
    assert "unavailable: database is locked" in doc and 'data-host="cool"' in doc and 'data-job="1"' in doc


def test_an_empty_cluster_renders():
    doc = make_page(status=lambda: {"head": "h", "nodes": []}, train_list=lambda: {"jobs": []},
                    science_status=lambda: {"batches": [], "credit_by_host": {}, "credit_by_app": {}, "hosts": []}
                    ).html().decode()
    assert "No PC has joined yet" in doc and "no jobs yet" in doc and "No science batch yet" in doc


def test_the_login_form_asks_for_the_token_and_shows_no_data(page):
    form = page.login_form(None).decode()
    tree = Tree(form)
    assert tree.find("form", method="post", action="/login") and tree.find("input", name="token", type="password")
    assert "cool" not in form and "RTX" not in form and not tree.find("script")
    bad = page.login_form("token: " + EVIL).decode()
    assert EVIL not in bad and "&lt;script&gt;" in bad


def test_loss_chart_handles_diverged_and_flat_and_empty_series():
    assert "no loss reported yet" in svg.loss_chart({"train": [], "val": []})
    flat = svg.loss_chart({"train": [(0, 1.0), (10, 1.0)]})
    assert 'class="curve train"' in flat and "nan" not in flat
    diverged = svg.loss_chart({"train": [(0, 3.0), (10, float("inf")), (20, float("nan")), (30, 2.0)]})
    assert len(re.search(r'points="([^"]+)"', diverged)[1].split()) == 2
    long = svg.loss_chart({"train": [(i, 1 / (i + 1)) for i in range(10_000)]})
    assert len(re.search(r'points="([^"]+)"', long)[1].split()) == svg.MAX_POINTS
