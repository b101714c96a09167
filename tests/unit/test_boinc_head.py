"""The head's side of the PCs' BOINC clients, against the real hosts table: a
PC's report is checked before anything of it is stored, an attach request
goes to the PCs that manage a client until each answers, and the project's
account key never reaches the head's disk."""
import copy

import pytest
from test_host_identity import AGENT_A, Nodes, record, register

from cluster.head.boinc import REQUEST_TTL_S, BoincFleet
from cluster.head.boincreport import ReportError, boinc_report, summary
from cluster.head.db import Database
from cluster.head.hosts import HostRecords, HostsApi
from cluster.head.http import ApiError

KEY = "0123456789abcdef0123456789abcdef"
GOOD = {"kind": "boinc", "connected": True, "note": "", "modes": {"cpu": "auto", "gpu": "never"},
        "owner_modes": {"cpu": "auto", "gpu": "always"}, "held": {"gpu": {"reason": "work", "detail": "gpu0 busy"}},
        "projects": [{"url": "https://www.gpugrid.net/", "name": "GPUGRID", "credit": 1234.5}],
        "tasks": {"running": 2, "ready": 5}, "attaches": {}}


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


@pytest.fixture
def head(tmp_path):
    db = Database(tmp_path / "salvage.db")
    nodes, hosts, clock = Nodes(), HostRecords(db), Clock()
    fleet = BoincFleet(alive=lambda: {r.name: r.boinc for r in hosts.alive()}, log=lambda line: None, clock=clock)
    api = HostsApi(hosts, nodes, epoch=1.0, running=dict, busy=dict, on_lost=lambda name: None,
                   log=lambda line: None, about={}, loopback=True, boinc=fleet)
    for i, agent in enumerate((AGENT_A, "c" * 32)):
        nodes.add(f"node-{i}", f"pc{i + 1}", agent)
        register(api, record(name=f"pc{i + 1}"), agent)
    yield api, fleet, hosts, clock, tmp_path / "salvage.db"
    db.close()


def beat(api, boinc, name="pc1", agent=AGENT_A):
    return api.api_heartbeat({"name": name, "agent_id": agent, "boinc": boinc})


def test_a_good_report_is_stored_and_summed_up_for_people(head):
    api, _fleet, hosts, *_ = head
    beat(api, GOOD)
    assert hosts.get("pc1").boinc == GOOD
    assert summary(GOOD) == "1 project, 2 running; GPU held (gpu0 busy); CPU lent"
    assert summary(None) == "-"
    assert summary({**GOOD, "connected": False, "note": "no BOINC client answers at 127.0.0.1:31416"}) == \
        "not reachable: no BOINC client answers at 127.0.0.1:31416"


@pytest.mark.parametrize("lie", [
    {"kind": "folding"},
    {"connected": "yes"},
    {"modes": {"gpu": "turbo"}},
    {"modes": {"tpu": "never"}},
    {"held": {"gpu": {"reason": "because", "detail": ""}}},
    {"projects": [{"url": "https://x/", "name": "X", "credit": float("nan")}]},
    {"projects": [{"url": "https://x/", "name": "X", "credit": -5}]},
    {"projects": [{"url": "https://x/", "name": "X", "credit": True}]},
    {"projects": [{"url": "https://x/", "name": "X", "credit": 1.0}] * 65},
    {"tasks": {"running": -1}},
    {"tasks": {"mining": 1}},
    {"tasks": {"running": 1.5}},
    {"attaches": {"not-an-id": {"state": "attached"}}},
    {"attaches": {"0123456789abcdef": {"state": "won"}}},
    {"note": ["a", "list"]},
])
def test_a_lying_or_broken_report_is_refused_whole_and_changes_nothing(head, lie):
    api, _fleet, hosts, *_ = head
    beat(api, GOOD)
    seen = hosts.get("pc1").last_seen
    with pytest.raises(ApiError) as err:
        beat(api, {**copy.deepcopy(GOOD), **lie})
    assert err.value.status == 400 and str(err.value).startswith("boinc")
    row = hosts.get("pc1")
    assert row.boinc == GOOD and row.last_seen == seen


def test_text_is_kept_to_one_bounded_line():
    report = boinc_report({**GOOD, "note": "line one\nline two " + "x" * 1000})
    assert "\n" not in report["note"] and len(report["note"]) <= 400
    with pytest.raises(ReportError):
        boinc_report("boinc")


def test_an_attach_goes_to_managed_pcs_until_each_answers_and_the_key_stays_off_disk(head):
    api, fleet, hosts, clock, db_path = head
    beat(api, GOOD)  # pc1 manages BOINC; pc2 does not
    api.api_heartbeat({"name": "pc2", "agent_id": "c" * 32})
    reply = fleet.api_attach({"url": "https://www.gpugrid.net/", "key": KEY, "hosts": None})
    rid = reply["id"]
    assert reply["sent"] == ["pc1"] and "does not manage BOINC" in reply["skipped"]["pc2"]
    directive = beat(api, GOOD)["directives"]["boinc_attach"]
    assert directive == [{"id": rid, "url": "https://www.gpugrid.net/", "key": KEY}]
    # Still attaching: asked again (the agent ignores a request it already has).
    assert beat(api, {**GOOD, "attaches": {rid: {"state": "attaching", "detail": ""}}})["directives"]["boinc_attach"]
    done = {**GOOD, "attaches": {rid: {"state": "failed", "detail": "attach https://www.gpugrid.net/: no network"}}}
    assert "boinc_attach" not in beat(api, done)["directives"]
    row = next(r for r in fleet.api_status({})["hosts"] if r["host"] == "pc1")
    assert row["boinc"]["attaches"][rid]["state"] == "failed" and row["waiting"] == []
    assert KEY.encode() not in db_path.read_bytes()


def test_an_attach_nobody_can_take_is_refused_and_bad_input_named(head):
    api, fleet, *_ = head
    with pytest.raises(ApiError) as err:
        fleet.api_attach({"url": "https://www.gpugrid.net/", "key": KEY, "hosts": ["pc2", "nope"]})
    assert err.value.status == 409 and "pc2" in str(err.value) and "nope: not alive" in str(err.value)
    for body, word in (({"url": "ftp://x.org/", "key": KEY}, "url"),
                       ({"url": "https://x.org/<script>", "key": KEY}, "url"),
                       ({"url": "https://x.org/", "key": "short"}, "account key"),
                       ({"url": "https://x.org/", "key": KEY + "</authenticator>"}, "account key"),
                       ({"url": "https://x.org/", "key": KEY, "hosts": "pc1"}, "hosts")):
        with pytest.raises(ApiError) as err:
            fleet.api_attach(body)
        assert err.value.status == 400 and str(err.value).startswith(word)


def test_a_request_no_agent_picks_up_expires(head):
    api, fleet, _hosts, clock, _ = head
    beat(api, GOOD)
    fleet.api_attach({"url": "https://www.gpugrid.net/", "key": KEY, "hosts": ["pc1"]})
    clock.t += REQUEST_TTL_S + 1
    assert "boinc_attach" not in beat(api, GOOD)["directives"]
