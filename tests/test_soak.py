"""The pure parts of the opt-in soak (tests/webui/soak.py), without a server: the job mix, the
memory bound, the port → process lookup on a fake /proc tree, the loopback-only rule."""
import json
import os
import sys

import pytest
from hypothesis import given, strategies as st

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "webui"))

import soak  # noqa: E402
import soak_memory as memory  # noqa: E402
from soak_plan import (FIXED_SAMPLERS, MULTI_EVALUATION_SAMPLERS, OFF_SETTINGS, REPEATS, coverage_gaps,  # noqa: E402
                        make_plan, window)

from fastface.config import PRESET_NAMES  # noqa: E402
from fastface.presets import validate  # noqa: E402

A1111_SAMPLERS = ["DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "Euler a", "Euler", "LMS", "Heun", "DDIM", "LCM",
                  "Restart", "DPM adaptive"]
FORGE_SAMPLERS = ["Euler", "Euler a", "DPM++ 2M", "LCM", "Euler CFG++", "DDIM CFG++"]


@given(st.integers(0, 2 ** 32), st.integers(1, 400))
def test_the_mix_is_the_same_for_a_seed(seed, n):
    plan = make_plan(n, seed, A1111_SAMPLERS)
    assert len(plan) == n and [j.index for j in plan] == list(range(n))
    assert [repr(j) for j in plan] == [repr(j) for j in make_plan(n, seed, A1111_SAMPLERS)]


def test_other_seeds_give_other_mixes():
    plans = {tuple(repr(j) for j in make_plan(100, seed, A1111_SAMPLERS)) for seed in range(5)}
    assert len(plans) == 5


@given(st.integers(0, 2 ** 32), st.integers(100, 300), st.sampled_from([A1111_SAMPLERS, FORGE_SAMPLERS]))
def test_a_mix_of_100_or_more_covers_every_category(seed, n, samplers):
    plan = make_plan(n, seed, samplers)
    random_txt = [j for j in plan if j.kind == "random"]
    on = [j for j in plan if j.enabled and j.bad_field is None]
    assert {j.fastface["preset"] for j in random_txt} == set(PRESET_NAMES)
    assert {j.settings["steps"] for j in random_txt} == set(range(1, 9))
    assert {j.settings["batch_size"] for j in random_txt} == {1, 2, 3, 4}
    assert {j.settings["cfg_scale"] == 1.0 for j in random_txt} == {True, False}
    assert {j.settings["hires"] for j in random_txt} == {True, False}
    assert {bool(j.fastface.get("show_attention")) for j in on} == {True, False}
    assert {j.fastface.get("readout", True) is not False for j in on} == {True, False}
    assert set(FIXED_SAMPLERS) & set(samplers) <= {j.settings["sampler_name"] for j in random_txt}
    assert any(j.endpoint == "img2img" and j.enabled for j in plan)
    # disabled jobs: all the same request, with FastFace off and without FastFace args
    off = [j for j in plan if j.kind == "off"]
    assert {j.fastface is None for j in off} == {True, False} and {j.compare for j in off} == {"off"}
    assert all(not j.enabled and j.settings == OFF_SETTINGS for j in off)
    # the cheap end: no sampler that evaluates the model more than once per step is drawn, the
    # few-step range comes round more often than the rest
    assert not {j.settings.get("sampler_name") for j in plan} & MULTI_EVALUATION_SAMPLERS
    few = sum(j.settings["steps"] <= 4 for j in random_txt)
    assert few > len(random_txt) - few
    for k in range(len(REPEATS)):
        assert sum(j.compare == f"repeat:{k}" for j in plan) >= 2
    # bad inputs: each one is rejected by the validator, for the field the soak expects in the note
    bad = [j for j in plan if j.kind == "bad"]
    assert len({j.bad_field for j in bad}) >= 5
    for j in bad:
        _, issues = validate({k: v for k, v in j.fastface.items() if k != "enabled"})
        assert [i.field for i in issues if i.rejected] == [j.bad_field]
    # interrupts and skips, never while the second client is on; the second client only then
    second = window(n)
    acts = [j for j in plan if j.action]
    assert {j.action for j in acts} == {"interrupt", "skip"} and not any(j.index in second for j in acts)
    twos = [j.index for j in plan if j.client == 2]
    assert twos and all(i in second for i in twos)
    assert coverage_gaps(plan, samplers) == []
    json.dumps([j.fastface for j in plan], allow_nan=False)   # the requests are JSON (no NaN)


def test_the_head_holds_every_kind_before_the_warm_up_ends():
    plan = make_plan(100, 3, A1111_SAMPLERS)
    head = plan[:20]
    assert plan[0].kind == "off" and plan[0].fastface is not None
    assert {j.kind for j in head} == {"off", "repeat", "random", "img2img", "bad", "interrupt", "skip"}
    # a first img2img comes before the first repeated img2img (A1111's first img2img differs)
    first_img2img = next(j.index for j in plan if j.endpoint == "img2img")
    assert plan[first_img2img].compare is None
    big = max(head, key=lambda j: j.settings.get("batch_size", 1))
    assert big.settings["batch_size"] == 4 and big.settings["hires"] and big.fastface["show_attention"]


@pytest.mark.parametrize("warm,end,within", [
    (4000.0, 4199.0, True), (4000.0, 4201.0, False),      # 5 % of 4000 MB = 200 MB
    (1000.0, 1149.0, True), (1000.0, 1151.0, False),      # the 150 MB floor
    (4000.0, 3000.0, True),                               # shrinking is fine
])
def test_rss_bound(warm, end, within):
    assert memory.rss_within_bound(warm, end) is within


def test_rss_bound_values():
    assert memory.rss_bound_mb(4000.0) == pytest.approx(200.0)
    assert memory.rss_bound_mb(1000.0) == 150.0


def test_rss_slope_per_100_jobs():
    assert memory.slope_mb_per_100_jobs([(20, 4000.0), (30, 4001.0), (40, 4002.0)]) == pytest.approx(10.0)
    assert memory.slope_mb_per_100_jobs([(20, 4000.0), (30, 4010.0), (40, 4000.0)]) == pytest.approx(0.0)
    assert memory.slope_mb_per_100_jobs([(20, 4000.0)]) is None
    assert memory.slope_mb_per_100_jobs([(20, 4000.0), (20, 4100.0)]) is None


TCP_HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"


def _tcp_line(local_port, remote_port, state, inode, addr="0100007F"):
    return (f"   0: {addr}:{local_port:04X} {addr}:{remote_port:04X} {state} 00000000:00000000 00:00000000 "
            f"00000000     0        0 {inode} 1 0000000000000000 100 0 0 10 0\n")


def _process(proc, pid, ppid, comm, rss_kb, sockets=()):
    d = proc / str(pid)
    (d / "fd").mkdir(parents=True)
    (d / "stat").write_text(f"{pid} ({comm}) S {ppid} {pid} {pid} 0 -1 4194560 0 0\n")
    (d / "status").write_text(f"Name:\t{comm}\nVmHWM:\t{2 * rss_kb} kB\nVmRSS:\t{rss_kb} kB\nThreads:\t4\n")
    for n, inode in enumerate(sockets):
        os.symlink(f"socket:[{inode}]", d / "fd" / str(3 + n))
    os.symlink("/dev/null", d / "fd" / "0")


@pytest.fixture
def fake_proc(tmp_path):
    """A server (100) listening on 7861 with a forked worker (101, sharing the socket) that has a
    child (103); a client connection from port 57334 to 7861 (102); IPv6 7862 (104)."""
    proc = tmp_path / "proc"
    (proc / "net").mkdir(parents=True)
    (proc / "net" / "tcp").write_text(TCP_HEADER + _tcp_line(7861, 0, "0A", 111) + _tcp_line(57334, 7861, "01", 222)
                                      + _tcp_line(7861, 57334, "01", 223) + _tcp_line(8000, 0, "0A", 333))
    (proc / "net" / "tcp6").write_text(TCP_HEADER + _tcp_line(7862, 0, "0A", 444, addr="0" * 32))
    _process(proc, 1, 0, "init", 1000)
    _process(proc, 100, 1, "python (launch) x", 4_000_000, sockets=[111, 223])
    _process(proc, 101, 100, "python", 500_000, sockets=[111])
    _process(proc, 102, 1, "curl", 2_000, sockets=[222])
    _process(proc, 103, 101, "sh", 1_024)
    _process(proc, 104, 1, "forge", 3_000_000, sockets=[444])
    return str(proc)


def test_pid_listening_on_a_port(fake_proc):
    assert memory.pid_listening_on(7861, fake_proc) == 100
    assert memory.pid_listening_on(7862, fake_proc) == 104     # tcp6
    assert memory.pid_listening_on(57334, fake_proc) is None   # a client's port is not listening
    assert memory.pid_listening_on(9999, fake_proc) is None


def test_rss_of_the_server_and_its_children(fake_proc):
    assert memory.descendants(100, fake_proc) == [101, 103]
    assert memory.tree_rss_mb(100, fake_proc) == pytest.approx((4_000_000 + 500_000 + 1_024) / 1024)
    assert memory.status_mb(100, "VmHWM", fake_proc) == pytest.approx(8_000_000 / 1024)
    assert memory.tree_rss_mb(999, fake_proc) is None


@pytest.mark.parametrize("url,ok", [
    ("http://127.0.0.1:7861", True), ("http://localhost:7861/", True), ("http://[::1]:7861", True),
    ("http://127.0.0.2:7861", True), ("http://0.0.0.0:7861", False), ("http://192.168.1.5:7861", False),
    ("http://example.com:7861", False), ("http://[::]:7861", False),
])
def test_loopback_only(url, ok):
    assert soak.is_loopback_url(url) is ok


def test_a_non_loopback_url_is_refused(capsys):
    with pytest.raises(SystemExit):
        soak.parse_args(["--url", "http://10.0.0.2:7861", "--host", "a1111", "--jobs", "10"])
    assert "not a loopback address" in capsys.readouterr().err


# -- the runner's verdicts, with `send` answering for a server ------------------------------------
def _runner(answers):
    """A Runner whose requests are answered by `answers(path, payload, sent)` (sent: earlier requests)."""
    from soak_run import Runner

    runner = Runner("http://127.0.0.1:1", {"model": "faceid"}, {"enable_hr": True}, 5.0, None)
    sent = []

    def send(path, payload):
        out = answers(path, payload, sent)
        sent.append((path, payload))
        if isinstance(out, Exception):
            raise out
        return out

    runner.send = send
    return runner, sent


def _answer(pixels: bytes, text="FastFace: preset=Realistic", note=None):
    import base64
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)) \
        + chunk(b"IDAT", zlib.compress(b"\x00" + pixels)) + chunk(b"IEND", b"")
    params = {"FastFace note": note} if note else {}
    return {"images": [base64.b64encode(png).decode()],
            "info_json": {"infotexts": [text], "extra_generation_params": params}}


def _fastface_on(payload):
    return (payload["alwayson_scripts"].get("FastFace", {}).get("args") or [{}])[0].get("enabled")


def test_a_request_refused_with_fastface_off_too_is_the_hosts():
    from soak_plan import SoakJob

    job = SoakJob(5, "random", 1, "txt2img", {"enabled": True, "preset": "Realistic"}, {"steps": 1, "seed": 1})
    runner, sent = _runner(lambda path, payload, sent: RuntimeError("UniPC order must be < sampling steps"))
    out = runner.run_job(job)
    assert out.status == "host refused" and out.problems == [] and "UniPC" in out.refusal
    assert [_fastface_on(p) for _, p in sent] == [True, False]


def test_a_request_that_fails_only_with_fastface_is_a_problem():
    from soak_plan import SoakJob

    job = SoakJob(5, "random", 1, "txt2img", {"enabled": True, "preset": "Realistic"}, {"steps": 1, "seed": 1})
    runner, _ = _runner(lambda path, payload, sent: RuntimeError("boom") if _fastface_on(payload) else _answer(b"\x01"))
    out = runner.run_job(job)
    assert out.status == "failed" and out.refusal == ""
    assert len(out.problems) == 1 and "boom" in out.problems[0] and "with FastFace off it answers" in out.problems[0]


def test_repeated_jobs_are_compared_with_their_first_run_and_img2img_is_sent_twice():
    from soak_plan import make_plan

    plan = make_plan(80, 1, FIXED_SAMPLERS)
    img2img = [j for j in plan if j.compare == "repeat:3"][:3]
    assert len(img2img) == 3
    results = iter([b"\x01", b"\x01", b"\x02", b"\x02", b"\x02", b"\x02"])   # two requests per job
    runner, sent = _runner(lambda path, payload, s: _answer(next(results)))
    outcomes = [runner.run_job(j) for j in img2img]
    assert len(sent) == 6 and all(path == "/sdapi/v1/img2img" for path, _ in sent)
    assert outcomes[0].problems == [] and len(outcomes[1].problems) == 1
    assert f"differ from job {img2img[0].index}, the first repeat:3" in outcomes[1].problems[0]
    assert f"the same as job {img2img[1].index}'s" in outcomes[2].problems[0]


def test_the_compared_img2img_pair_has_no_other_clients_job_between_its_sends():
    """The other client keeps sending while a compared img2img is sent twice: nothing of theirs may
    reach the server between the two sends (nor be in flight when the pair starts)."""
    import threading
    import time

    from soak_plan import make_plan

    plan = make_plan(80, 1, FIXED_SAMPLERS)
    pair = next(j for j in plan if j.compare == "repeat:3")
    others = [j for j in plan if j.kind in ("random", "off")][:6]
    at_server = threading.Lock()       # the server runs one request at a time
    order = []

    def answers(path, payload, sent):
        with at_server:
            order.append(("start", path))
            time.sleep(0.02)
            order.append(("end", path))
        return _answer(b"\x01")

    runner, _ = _runner(answers)

    def other_client():
        for job in others:
            runner.run_job(job)

    helper = threading.Thread(target=other_client)
    helper.start()
    time.sleep(0.03)                   # the other client has a request in flight
    runner.run_job(pair)
    helper.join()
    img2img = [k for k, (what, path) in enumerate(order) if path == "/sdapi/v1/img2img"]
    assert len(img2img) == 4 and img2img == list(range(img2img[0], img2img[0] + 4))
    assert len(order) == 2 * (2 + len(others))


def test_a_bad_input_must_come_back_with_the_rejection_note():
    from soak_plan import make_plan

    bad = next(j for j in make_plan(20, 0, FIXED_SAMPLERS) if j.kind == "bad")
    note = f"FastFace is off for this job: rejected {bad.bad_field} (expected a number; got 'lots')"
    runner, _ = _runner(lambda path, payload, sent: _answer(b"\x01", text="Steps: 2", note=note))
    assert runner.run_job(bad).problems == []
    runner, _ = _runner(lambda path, payload, sent: _answer(b"\x01", text="Steps: 2, FastFace: preset=Realistic"))
    problems = runner.run_job(bad).problems
    assert any("not the rejection" in p for p in problems) and any("FastFace ran anyway" in p for p in problems)
