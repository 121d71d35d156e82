"""Opt-in soak: N mixed jobs against one real, running WebUI with FastFace, checking that nothing
fails, that repeated jobs stay identical and that the server's memory stays flat.

    python tests/webui/soak.py --url http://127.0.0.1:7861 --host a1111 --jobs 300 \\
        [--max-seconds 14400] [--seed 0] [--pid PID] [--out soak-out] [--unit UNIT_JSON]

Not a pytest file (never collected): run it with the test environment's Python against a server
started as for tests/webui/test_real_webui.py (FASTFACE_TRACE not needed). Loopback URLs only.
Forge 2 and Neo need a FaceID unit of their own (`--unit`, or FASTFACE_FACEID_UNIT): write them
with `python tests/webui/write_units.py --url URL --out DIR` and pass DIR/unit_plusv2.json; on
A1111 the default is test_real_webui.py's FaceID unit with a precomputed embedding.

The mix (soak_plan.py, the same for a seed and a sampler list): every preset, 1–8 steps, the
samplers every host has plus any the server lists, CFG 1 and > 1, batch 1–4, hires fix, img2img,
show_attention and the likeness readout on and off, the bad FastFace inputs of
tests/test_config.py, interrupts and skips sent from a second thread mid-job, and a stretch where
a second client sends jobs at the same time, all at 64×64.

Checks, each failure listed as a problem (exit status 1 if there is any):
- every request answers HTTP 200 with its images; interrupted and skipped jobs too (counted
  apart); a bad input comes back with the documented note ("FastFace is off for this job:
  rejected <field> (…)") and no FastFace key; no job has an "internal error" note; a failed
  FastFace job is sent again with FastFace off: if that fails as well, the host refuses the
  request by itself (UniPC with fewer steps than its order) and it is listed apart, not counted;
- every disabled job (fixed seed and settings; FastFace args off or not sent at all) has the
  pixels of the first, and each repeated FastFace configuration (soak_plan.REPEATS) the pixels
  of its first run (jobs that were interrupted or skipped are not compared; a compared img2img
  is sent twice in a row and the second answer compared: on A1111 the first img2img after any
  other job gives other pixels, FastFace on or off);
- the server's RSS (VmRSS of the process listening on the URL's port, found through
  /proc/net/tcp* unless --pid is given, plus its child processes) after the last job is within
  max(5 % of the warm-up value, 150 MB) of its value after the warm-up (--warmup jobs, by which
  every cache is full): see soak_memory.py for why that bound. RSS is sampled every
  --sample-every jobs as well; the least-squares slope over the samples after the warm-up is
  printed in MB per 100 jobs, so a slow leak shows before it crosses the bound.
Prints the host's jobs, problems, RSS after the warm-up and at the end (and the largest sample),
seconds per job; writes a JSON summary into --out.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
for _folder in (os.path.dirname(os.path.dirname(HERE)), os.path.dirname(HERE), HERE):
    if _folder not in sys.path:   # the repository (fastface), tests/ (test_config), tests/webui
        sys.path.insert(0, _folder)

import soak_memory as memory  # noqa: E402
import webui_client as client  # noqa: E402
from soak_plan import coverage_gaps, make_plan, window  # noqa: E402
from soak_run import Runner  # noqa: E402

HOSTS = ("a1111", "forge", "neo")
MAX_JOBS = 5000


def is_loopback_url(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True, help="the server, loopback only (http://127.0.0.1:PORT)")
    ap.add_argument("--host", required=True, choices=HOSTS)
    ap.add_argument("--jobs", type=int, required=True, help=f"jobs in all, 1..{MAX_JOBS}")
    ap.add_argument("--max-seconds", type=float, default=4 * 3600, help="no new job after this (default 4 h)")
    ap.add_argument("--seed", type=int, default=0, help="the job mix's seed")
    ap.add_argument("--pid", type=int, help="the server process (default: whoever listens on the URL's port)")
    ap.add_argument("--out", default="soak-out", help="folder for the JSON summary")
    ap.add_argument("--unit", help="FaceID unit: JSON or a JSON file (default FASTFACE_FACEID_UNIT, or A1111's)")
    ap.add_argument("--warmup", type=int, default=20, help="jobs before the memory baseline")
    ap.add_argument("--sample-every", type=int, default=10, help="RSS sample every this many jobs")
    ap.add_argument("--request-timeout", type=float, default=600.0)
    a = ap.parse_args(argv)
    a.url = a.url.rstrip("/")
    if not is_loopback_url(a.url):
        ap.error(f"{a.url} is not a loopback address: the soak drives local servers only")
    if not 1 <= a.jobs <= MAX_JOBS:
        ap.error(f"--jobs must be 1..{MAX_JOBS}")
    if a.host != "a1111" and not (a.unit or os.environ.get("FASTFACE_FACEID_UNIT")):
        ap.error(f"{a.host} needs --unit (write_units.py's unit_plusv2.json): the default unit is A1111's")
    return a


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def server_pid(a) -> tuple[int | None, str]:
    if a.pid:
        return a.pid, f"pid {a.pid} (--pid)"
    port = urllib.parse.urlsplit(a.url).port or 80
    pid = memory.pid_listening_on(port)
    return pid, (f"pid {pid} (listening on port {port})" if pid else f"no process found listening on port {port}")


def report(a, runner: Runner, pid, pid_text, plan, gaps, wall) -> dict:
    """Print the host's figures; return the JSON summary."""
    done = runner.outcomes
    rss = runner.rss_summary(pid, a.warmup)
    problems = runner.problems + rss["problems"]
    counts = {}
    for o in done:
        counts[o.status] = counts.get(o.status, 0) + 1
    per_job = wall / len(done) if done else None
    lines = [f"soak {a.host} at {a.url}: {len(done)} of {a.jobs} jobs in {wall:.0f} s"
             + (f" = {per_job:.2f} s per job" if per_job else "")
             + (f" (second client: {sum(o.job.client == 2 for o in done)} jobs)" if done else ""),
             "  outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
             "  kinds: " + ", ".join(f"{k} {sum(o.job.kind == k for o in done)}" for k in
                                     ("off", "repeat", "random", "img2img", "bad", "interrupt", "skip")),
             f"  server: {pid_text}",
             "  " + rss["line"]]
    if gaps:
        lines.append(f"  not covered by this short mix: {', '.join(gaps)}")
    if runner.stopped:
        lines.append(f"  stopped early: {runner.stopped}")
    refused = [o.refusal for o in done if o.refusal]
    if refused:
        lines.append(f"  refused by the host itself, FastFace on and off (not FastFace's; not counted): {len(refused)}")
        lines += [f"   - {r}" for r in refused]
    lines.append(f"  problems: {len(problems)}")
    lines += [f"   - {p}" for p in problems]
    print("\n".join(lines), flush=True)
    return {"host": a.host, "url": a.url, "jobs_asked": a.jobs, "jobs_done": len(done), "seed": a.seed,
            "seconds": wall, "seconds_per_job": per_job, "outcomes": counts, "server": pid_text,
            "rss": {k: v for k, v in rss.items() if k != "problems"}, "coverage_gaps": gaps,
            "stopped_early": runner.stopped, "problems": problems, "host_refused": refused,
            "second_client_window": [window(len(plan)).start, window(len(plan)).stop],
            "jobs": [o.record() for o in done]}


def main(argv=None) -> int:
    a = parse_args(argv)
    try:
        scripts = client.get(a.url, "/sdapi/v1/scripts")
    except (urllib.error.URLError, OSError) as exc:
        print(f"soak: no server at {a.url} ({exc})", file=sys.stderr)
        return 2
    if "fastface" not in [s.lower() for s in scripts.get("txt2img", [])]:
        print(f"soak: the server at {a.url} has no FastFace script", file=sys.stderr)
        return 2
    samplers = [s["name"] for s in client.get(a.url, "/sdapi/v1/samplers")]
    plan = make_plan(a.jobs, a.seed, samplers)
    gaps = coverage_gaps(plan, samplers)
    pid, pid_text = server_pid(a)
    runner = Runner(a.url, client.face_unit(a.unit), client.hires_payload(a.url, a.host), a.request_timeout, pid)
    print(f"soak {a.host}: {a.jobs} jobs (seed {a.seed}, second client for jobs {window(a.jobs).start}–"
          f"{window(a.jobs).stop - 1}), {len(samplers)} samplers, server {pid_text}", flush=True)
    # SIGTERM (a `timeout` around the soak) ends it like Ctrl-C: summary written, job in flight interrupted
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    start = time.monotonic()
    runner.run(plan, deadline=start + a.max_seconds, warmup=a.warmup, sample_every=a.sample_every)
    summary = report(a, runner, pid, pid_text, plan, gaps, time.monotonic() - start)
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, f"soak-{a.host}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(path, "w") as f:
        json.dump(summary, f, indent=1, default=str)
    print(f"  summary: {path}")
    return 1 if summary["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
