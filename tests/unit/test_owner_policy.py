"""The owner's policy on a PC, with plain readings (no cluster): what it allows
and why, its hysteresis, one-line errors for bad files, idle detection from
device access times, the pause file tasks watch, and the health monitor."""
import datetime as dt
import json
import os
import time

import pytest

from workers.health import CHECK_BACKOFF_S, HealthMonitor
from workers.idle import idle_seconds, last_input
from workers.pauses import Pauses
from workers.policy import Policy, PolicyError, PolicyState, Readings, in_window
from workers.records import GpuSample
from workers.tasks import pausing
from workers.tasks.pausing import PauseWatch

MONDAY_NOON = dt.datetime(2026, 12, 7, 12, 0)


def readings(**kw):
    base = dict(now=1000.0, local=MONDAY_NOON, idle_s=3600.0, other_cpu=0.0, ram_share=0.1, gpu_temps={})
    return Readings(**{**base, **kw})


def policy(text: str) -> Policy:
    import tomllib

    return Policy.from_dict(tomllib.loads(text))


def test_a_gpu_pauses_at_its_ceiling_and_resumes_only_below_the_lower_mark():
    state = PolicyState(Policy())
    temps = [70, 82, 83, 80, 76, 75, 74.9, 80, 83.5]
    paused = [0 in state.decide(readings(gpu_temps={0: t, 1: 40.0})).gpus for t in temps]
    assert paused == [False, False, True, True, True, True, False, False, True]
    assert 1 not in state.decide(readings(gpu_temps={0: 90.0, 1: 40.0})).gpus  # per GPU


def test_owner_input_and_idle_that_cannot_be_told():
    state = PolicyState(policy("[idle]\nminutes = 10"))
    assert state.decide(readings(idle_s=120)).host == "owner_input"
    assert state.decide(readings(idle_s=601)).host is None
    unknown = state.decide(readings(idle_s=None))
    assert unknown.host == "idle_unknown" and "cannot be detected" in unknown.detail[0]
    assert PolicyState(Policy()).decide(readings(idle_s=None)).host is None  # not asked for: no matter


def test_the_owners_cpu_use_pauses_quickly_and_resumes_slowly():
    state = PolicyState(policy("[idle]\nmax_other_cpu = 0.3"))
    t = 0.0
    decisions = []
    for load in [0.5] * 12 + [0.1] * 70:  # one reading a second
        decisions.append(state.decide(readings(now=t, other_cpu=load)).host)
        t += 1.0
    first_pause = decisions.index("owner_cpu")
    assert 9 <= first_pause <= 11  # about 10 s over the mark
    back = next(i for i in range(first_pause, len(decisions)) if decisions[i] is None)
    assert back - 12 >= 59  # about 60 s under 80% of the mark
    state = PolicyState(policy("[idle]\nmax_other_cpu = 0.3"))
    flapping = [state.decide(readings(now=i, other_cpu=0.5 if i % 4 < 2 else 0.1)).host for i in range(60)]
    assert set(flapping) == {None}  # a load that comes and goes never crosses for long


def test_time_windows_per_weekday_and_across_midnight():
    p = policy('[windows]\nweekdays = ["19:00-07:00"]\nsat = "all"\nsun = "none"')
    assert not in_window(p, dt.datetime(2026, 12, 7, 12, 0))  # Monday noon
    assert in_window(p, dt.datetime(2026, 12, 7, 20, 0))  # Monday evening
    assert in_window(p, dt.datetime(2026, 12, 8, 6, 59))  # Tuesday dawn: Monday's window
    assert not in_window(p, dt.datetime(2026, 12, 8, 7, 0))
    assert in_window(p, dt.datetime(2026, 12, 12, 15, 0))  # Saturday
    assert not in_window(p, dt.datetime(2026, 12, 13, 3, 0))  # Sunday: "none" (Saturday's "all" ends at midnight)
    assert in_window(p, dt.datetime(2026, 12, 14, 20, 0))  # and Monday evening again
    decision = PolicyState(p).decide(readings())
    assert decision.host == "time_window" and "mon 12:00" in decision.detail[0]


@pytest.mark.parametrize("text, key", [
    ("[gpu]\npause_above_c = 'hot'", "gpu.pause_above_c"),
    ("[gpu]\npause_above_c = 70\nresume_below_c = 75", "gpu.resume_below_c"),
    ("[idle]\nminutes = -1", "idle.minutes"),
    ("[windows]\nmonday = ['19:00-07:00']", "windows.monday"),
    ("[windows]\nmon = ['7pm-7am']", "windows.mon"),
    ("[limits]\nduty_cycle = 0", "limits.duty_cycle"),
    ("[limits]\ncolour = 'red'", "limits.colour"),
    ("[sleep]\nx = 1", "sleep"),
    ("[gpu\npause_above_c = 80", "policy"),
])
def test_a_bad_policy_file_is_a_one_line_error_naming_the_key(tmp_path, text, key):
    path = tmp_path / "policy.toml"
    path.write_text(text)
    with pytest.raises(PolicyError) as err:
        Policy.load(path)
    assert str(err.value).startswith(key) and "\n" not in str(err.value)


def test_idle_is_read_from_device_access_times(tmp_path):
    keyboard, console = tmp_path / "event0", tmp_path / "tty1"
    for f in (keyboard, console):
        f.write_text("")
    now = time.time()
    os.utime(keyboard, (now - 3600, now - 3600))
    os.utime(console, (now - 600, now - 5))  # written to a moment ago (output), read 10 min ago
    devices = (str(tmp_path / "event*"), str(tmp_path / "tty*"))
    assert last_input(devices) == pytest.approx(now - 600, abs=1)
    assert idle_seconds(devices, now) == pytest.approx(600, abs=2)
    assert idle_seconds((str(tmp_path / "nothing*"),), now) is None


def test_the_pause_file_tells_each_task_whether_to_step_aside(tmp_path, monkeypatch):
    monkeypatch.setattr(pausing, "LOOK_EVERY_S", 0.0)  # every ask reads the file
    path = tmp_path / "pc.pause.json"
    cpu, gpu1, science = PauseWatch(str(path), "cpu"), PauseWatch(str(path), "gpu1"), \
        PauseWatch(str(path), "cpu", science=True)
    assert not cpu() and not gpu1()  # no file yet: nothing paused
    pausing.write(path, None, {1: "gpu_hot"}, None)
    assert not cpu() and gpu1.reason() == "gpu_hot"
    pausing.write(path, None, {}, "preempted")
    assert not cpu() and not gpu1() and science.reason() == "preempted"  # only science yields to training
    pausing.write(path, "owner_input", {}, None)
    assert cpu.reason() == gpu1.reason() == science.reason() == "owner_input"
    assert PauseWatch(None, "cpu")() is False


def test_a_task_sees_a_pause_within_its_look_interval(tmp_path):
    path = tmp_path / "pc.pause.json"
    watch = PauseWatch(str(path), "cpu")
    assert not watch()
    pausing.write(path, "owner_input", {}, None)
    time.sleep(pausing.LOOK_EVERY_S * 1.5)
    assert watch.reason() == "owner_input"
    path.unlink()  # the pause file gone: nothing is paused
    time.sleep(pausing.LOOK_EVERY_S * 1.5)
    assert not watch()


def test_pauses_combine_policy_operator_health_and_preemption(tmp_path):
    said = []
    health = HealthMonitor(check=lambda device: (True, "ok"))
    pauses = Pauses(tmp_path / "p.json", policy("[gpu]\npause_above_c = 80\nresume_below_c = 70"), None,
                    health, said.append)
    from workers.host import HostSample, Poll

    poll = Poll(HostSample(0.1, 1, 2, 1, 2), [GpuSample(0, temperature_c=85.0), GpuSample(1, temperature_c=50.0)])
    assert pauses.update(poll)
    assert pauses.state.host is None and pauses.state.gpus == {0: "gpu_hot"}
    pauses.directives = {"admin": {"host": {"state": "paused", "reason": "moving the PC"}}, "science_yield": True}
    assert pauses.update(poll)
    assert pauses.state.host == "operator" and pauses.state.science == "preempted"
    assert any("moving the PC" in line for line in pauses.state.detail)
    on_disk = json.loads((tmp_path / "p.json").read_text())
    assert on_disk == {"host": "operator", "gpus": {"0": "gpu_hot"}, "science": "preempted"}
    pauses.directives = {}
    health.mark("gpu1", "lost (fell off the bus)")
    assert pauses.update(poll)
    assert pauses.state.host is None and pauses.state.gpus == {0: "gpu_hot", 1: "unhealthy"}
    assert not pauses.update(poll)  # nothing changed: the file is not rewritten


def test_a_bad_policy_file_on_reload_keeps_the_policy_in_force(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text("[gpu]\npause_above_c = 80\nresume_below_c = 70")
    said = []
    pauses = Pauses(tmp_path / "p.json", Policy.load(path), path, HealthMonitor(), said.append)
    path.write_text("[gpu]\npause_above_c = 'very'")
    os.utime(path, (time.time() + 5, time.time() + 5))
    pauses.reload()
    assert pauses.policy.pause_above_c == 80 and said and said[0].startswith("note: gpu.pause_above_c:")
    path.write_text("[gpu]\npause_above_c = 90\nresume_below_c = 80")
    os.utime(path, (time.time() + 10, time.time() + 10))
    pauses.reload()
    assert pauses.policy.pause_above_c == 90


def test_a_reloaded_policy_keeps_a_hot_gpu_paused_until_it_cools_below_the_lower_mark(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text("[gpu]\npause_above_c = 80\nresume_below_c = 70")
    pauses = Pauses(tmp_path / "p.json", Policy.load(path), path, HealthMonitor(), lambda line: None)
    from workers.host import HostSample, Poll

    def at(temperature):
        return Poll(HostSample(0.1, 1, 2, 1, 2), [GpuSample(0, temperature_c=temperature)])
    pauses.update(at(85.0))
    assert pauses.state.gpus == {0: "gpu_hot"}
    path.write_text('[gpu]\npause_above_c = 80\nresume_below_c = 70\n[windows]\nevery_day = "all"')
    os.utime(path, (time.time() + 5, time.time() + 5))  # the owner edits another part of the policy
    pauses.update(at(75.0))
    assert pauses.policy.windows and pauses.state.gpus == {0: "gpu_hot"}  # between the marks: still paused
    pauses.update(at(65.0))
    assert pauses.state.gpus == {}


def test_a_sick_gpu_comes_back_only_after_its_check_passes_with_backoff():
    clock = [0.0]
    outcomes = [False, False, True]
    checks = []

    def check(device):
        checks.append((device, clock[0]))
        return outcomes.pop(0), "checked"

    health = HealthMonitor(check=check, clock=lambda: clock[0])
    health.observe([GpuSample(0), GpuSample(1)], {0: 0, 1: 0})
    health.observe([GpuSample(0), GpuSample(1)], {0: 1, 1: 0})  # an Xid error on GPU 0
    assert health.gpus() == {0: "Xid critical error (1 new)"}

    def run_due(at):
        clock[0] = at
        health.due(set())
        for _ in range(100):
            if not health._running:
                break
            time.sleep(0.01)

    run_due(CHECK_BACKOFF_S[0] - 1)
    assert checks == []  # not yet
    run_due(CHECK_BACKOFF_S[0])
    assert len(checks) == 1 and health.gpus()  # failed: still sick
    run_due(CHECK_BACKOFF_S[0] + 2 * CHECK_BACKOFF_S[0] - 1)
    assert len(checks) == 1  # the wait doubled
    run_due(CHECK_BACKOFF_S[0] + 2 * CHECK_BACKOFF_S[0])
    run_due(10_000)
    assert len(checks) == 3 and health.gpus() == {}
    health.observe([GpuSample(0, lost=True)], {0: 1})
    assert "lost" in health.gpus()[0]
    clock[0] = 20_000
    health.due({"gpu0"})  # still lost: no check is started
    assert len(checks) == 3


def test_an_empty_policy_pauses_nothing_and_says_what_it_is():
    decision = PolicyState(Policy()).decide(readings(gpu_temps={0: 60.0}))
    assert decision.running and decision.gpus == {} and decision.detail == []
    assert "a GPU pauses at 83 °C and resumes below 75 °C" in Policy().describe()
