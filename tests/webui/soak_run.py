"""Running the soak's plan against a server (tests/webui/soak.py): sending each job, interrupting
or skipping it from another thread, the second client, the checks of each answer and the RSS
samples."""
from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
import urllib.error

import soak_memory as memory
import webui_client as client
from soak_plan import SoakJob, window
from write_units import face_image_b64

NOTE_KEY = "FastFace note"
REJECTED = "FastFace is off for this job: "   # fastface.hosts.webui.process writes it so
POLL_S = 0.05


@dataclasses.dataclass
class Outcome:
    job: SoakJob
    status: str            # ok | interrupted | skipped | ran through (the action came too late) | failed |
    #                        host refused (it fails with FastFace off too: e.g. UniPC with fewer steps than its order)
    seconds: float
    problems: list[str]
    done_after: int        # jobs finished when this one did (both clients)
    refusal: str = ""

    def record(self) -> dict:
        j = self.job
        return {"index": j.index, "kind": j.kind, "client": j.client, "endpoint": j.endpoint,
                "fastface": repr(j.fastface), "settings": j.settings, "status": self.status,
                "seconds": round(self.seconds, 3), "done_after": self.done_after, "problems": self.problems,
                "refusal": self.refusal}


class _Turns:
    """Who may have a request at the server. Both clients' jobs run at once, except a pair of sends
    that must follow each other with no other job between them (the compared img2img: on A1111 and
    the Forge family the VAE encode of the init image samples with torch's global RNG, in the state
    the job before left it, so an img2img's pixels depend on that job): the pair waits for the other
    client's request in flight to end and holds the other client's next one back."""

    def __init__(self):
        self.cond = threading.Condition()
        self.in_flight = 0
        self.pair = False

    @contextlib.contextmanager
    def shared(self):
        with self.cond:
            self.cond.wait_for(lambda: not self.pair)
            self.in_flight += 1
        try:
            yield
        finally:
            with self.cond:
                self.in_flight -= 1
                self.cond.notify_all()

    @contextlib.contextmanager
    def alone(self):
        with self.cond:
            self.cond.wait_for(lambda: not self.pair)
            self.pair = True
            self.cond.wait_for(lambda: self.in_flight == 0)
        try:
            yield
        finally:
            with self.cond:
                self.pair = False
                self.cond.notify_all()


def _error_text(exc: Exception) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        try:
            body = exc.read().decode(errors="replace")
        except Exception:
            body = ""
        return f"HTTP {exc.code}: {body[:300]}"
    return f"{type(exc).__name__}: {exc}"


class Runner:
    def __init__(self, url: str, unit: dict, hires: dict, timeout: float, pid: int | None):
        """`hires`: the host's hires-fix fields (webui_client.hires_payload)."""
        self.url, self.unit, self.hires, self.timeout, self.pid = url, unit, hires, timeout, pid
        self.init_image = face_image_b64(seed=5, size=64)
        self.lock = threading.Lock()
        self.turns = _Turns()
        self.refs: dict[str, list[tuple[int, list[bytes]]]] = {}   # compare key → (job, pixels): the first, other results
        self.outcomes: list[Outcome] = []
        self.problems: list[str] = []
        self.samples: list[tuple[int, float]] = []           # (jobs done, RSS MB)
        self.stopped = ""

    # -- one job -------------------------------------------------------------------------------
    def payload(self, job: SoakJob, fastface="as planned") -> tuple[str, dict]:
        settings = dict(job.settings)
        if settings.pop("hires", False):
            settings.update(self.hires)
        args = job.fastface if fastface == "as planned" else fastface
        if job.endpoint == "img2img":
            return "/sdapi/v1/img2img", client.img2img_payload(self.init_image, args, unit=self.unit, **settings)
        return "/sdapi/v1/txt2img", client.txt2img_payload(args, unit=self.unit, **settings)

    def send(self, path: str, payload: dict) -> dict:
        return client.with_info(client.post(self.url, path, payload, timeout=self.timeout))

    def _act(self, action: str, stop: threading.Event, fired: list) -> None:
        """Interrupt or skip the job in flight once it has finished a sampling step."""
        while not stop.is_set():
            try:
                state = client.get(self.url, "/sdapi/v1/progress?skip_current_image=true").get("state", {})
                if state.get("job_count", 0) > 0 and state.get("sampling_step", 0) >= 1:
                    client.post(self.url, f"/sdapi/v1/{action}", {}, timeout=60)
                    fired.append(action)
                    return
            except Exception:   # a progress poll that fails is retried; the job's answer is what counts
                pass
            stop.wait(POLL_S)

    def run_job(self, job: SoakJob) -> Outcome:
        path, payload = self.payload(job)
        fired: list = []
        stop = threading.Event()
        actor = threading.Thread(target=self._act, args=(job.action, stop, fired), daemon=True) if job.action else None
        if actor:
            actor.start()
        t0 = time.monotonic()
        # An img2img right after another job differs from the identical img2img sent next,
        # FastFace on or off (_Turns; test_real_webui.py's img2img test warms up for the same
        # reason): the run compared is the second of two sent back to back.
        paired = bool(job.compare) and job.endpoint == "img2img"
        try:
            with self.turns.alone() if paired else self.turns.shared():
                if paired:
                    self.send(path, payload)
                resp, error = self.send(path, payload), None
        except Exception as exc:   # every failure is a finding, never the end of the soak
            resp, error = None, _error_text(exc)
        seconds = time.monotonic() - t0
        if actor:
            stop.set()
            actor.join()
        name = f"job {job.index} ({job.kind}, client {job.client}, {job.endpoint}, FastFace {job.fastface!r}, {job.settings})"
        if error:
            again = self._without_fastface(job)
            if again and again != "answers":   # the host refuses the request by itself
                return Outcome(job, "host refused", seconds, [], 0,
                               f"{name}: {error}; with FastFace off too: {again}")
            return Outcome(job, "failed", seconds, [f"{name}: {error}" + (" (with FastFace off it answers)" if again else "")], 0)
        acted = bool(fired)
        status = {"interrupt": "interrupted", "skip": "skipped"}.get(job.action, "ok") if acted else \
            ("ran through" if job.action else "ok")
        return Outcome(job, status, seconds, [f"{name}: {p}" for p in self.check(job, resp, acted)], 0)

    def _without_fastface(self, job: SoakJob) -> str:
        """For a FastFace job that failed: "answers" if the same request with FastFace off does,
        else its error; "" for a job that had FastFace off already."""
        if not job.enabled:
            return ""
        try:
            with self.turns.shared():
                self.send(*self.payload(job, fastface={"enabled": False}))
            return "answers"
        except Exception as exc:
            return _error_text(exc)

    def check(self, job: SoakJob, resp: dict, acted: bool) -> list[str]:
        problems = []
        info = resp["info_json"]
        texts = info.get("infotexts") or []
        note = str(info.get("extra_generation_params", {}).get(NOTE_KEY, ""))
        images = resp.get("images") or []
        expected = job.settings.get("batch_size", 1) * job.settings.get("n_iter", 1)
        if not acted and len(images) < expected:
            problems.append(f"{len(images)} images, expected at least {expected}")
        if "internal error" in note:
            problems.append(f"internal error: {note}")
        if job.bad_field:
            if not (note.startswith(REJECTED) and f"rejected {job.bad_field} (" in note):
                problems.append(f"bad input {job.bad_field}: note {note!r}, not the rejection")
            if any("FastFace: " in t for t in texts):
                problems.append("bad input: FastFace ran anyway (its infotext key is there)")
        elif job.enabled and not any("FastFace: " in t for t in texts):
            problems.append(f"FastFace on but no FastFace key in the infotext (note {note!r})")
        elif not job.enabled and any("FastFace" in t for t in texts):
            problems.append("FastFace off but the infotext names FastFace")
        if job.compare and not acted and images:
            problems += self._compare(job, images)
        return problems

    def _compare(self, job: SoakJob, images: list[str]) -> list[str]:
        try:
            pixels = [client.png_pixels(i) for i in images]
        except Exception as exc:
            return [f"images not readable as PNG ({type(exc).__name__}: {exc})"]
        with self.lock:
            seen = self.refs.setdefault(job.compare, [])
            if not seen:
                seen.append((job.index, pixels))
                return []
            first = seen[0]
            if pixels == first[1]:
                return []
            like = next((i for i, p in seen[1:] if p == pixels), None)
            if like is None:
                seen.append((job.index, pixels))
        differ = [k for k, (a, b) in enumerate(zip(first[1], pixels)) if a != b]
        return [f"pixels differ from job {first[0]}, the first {job.compare} "
                f"({len(pixels)} images against {len(first[1])}; differing: {differ})"
                + (f"; the same as job {like}'s" if like is not None else "")]

    # -- the plan ------------------------------------------------------------------------------
    def _finish(self, outcome: Outcome) -> None:
        with self.lock:
            outcome.done_after = len(self.outcomes) + 1
            self.outcomes.append(outcome)
            self.problems += outcome.problems
        print(f"  job {outcome.job.index:4d} {outcome.job.kind:9s} c{outcome.job.client} "
              f"{outcome.status:11s} {outcome.seconds:6.1f} s" + (f"  PROBLEM {outcome.problems}" if outcome.problems else ""),
              flush=True)

    def _run_list(self, jobs: list[SoakJob], deadline: float) -> None:
        for job in jobs:
            if time.monotonic() > deadline:
                self.stopped = f"--max-seconds reached before job {job.index}"
                return
            self._finish(self.run_job(job))

    def sample(self) -> None:
        mb = memory.tree_rss_mb(self.pid) if self.pid else None
        if mb is not None:
            self.samples.append((len(self.outcomes), mb))

    def _sample_if_due(self, warmup: int, sample_every: int) -> None:
        done = len(self.outcomes)
        last = max((x for x, _ in self.samples if x >= warmup), default=None)
        if done >= warmup and (last is None or done - last >= sample_every):
            self.sample()

    def run(self, plan: list[SoakJob], deadline: float, warmup: int, sample_every: int) -> None:
        """Client 1's jobs in order; the second client's on a thread from the window's start until
        client 1 reaches its end. RSS is sampled before the first job, after the warm-up, every
        `sample_every` jobs and at the end, never while the second client may have a job running."""
        second = window(len(plan))
        theirs = [j for j in plan if j.client == 2]
        helper = None
        self.sample()
        try:
            for job in plan:
                if job.client == 2:
                    continue
                if time.monotonic() > deadline:
                    self.stopped = f"--max-seconds reached before job {job.index}"
                    break
                if theirs and helper is None and job.index >= second.start:
                    helper = threading.Thread(target=self._run_list, args=(theirs, deadline), daemon=True)
                    helper.start()
                self._finish(self.run_job(job))
                if helper is not None and helper.is_alive():
                    if job.index + 1 < second.stop:
                        continue
                    helper.join()
                self._sample_if_due(warmup, sample_every)
        except KeyboardInterrupt:   # Ctrl-C or SIGTERM (soak.py): the job in flight would run on
            self.stopped = "stopped by Ctrl-C or SIGTERM; the job in flight was interrupted"
            try:
                client.post(self.url, "/sdapi/v1/interrupt", {}, timeout=60)
            except Exception:
                pass
        if helper is not None:
            helper.join()
        if not self.samples or self.samples[-1][0] != len(self.outcomes):
            self.sample()

    def rss_summary(self, pid, warmup: int) -> dict:
        """The memory verdict: the first sample at or after `warmup` jobs against the last one."""
        if not pid:
            text = "RSS not measured: no server process found (pass --pid)"
            return {"line": text, "problems": [text]}
        after = [(x, mb) for x, mb in self.samples if x >= warmup]
        if len(after) < 2:
            return {"line": f"RSS not checked: the run ended before the warm-up ({warmup} jobs) and one more sample; "
                            f"samples (jobs, MB) {[(x, round(mb)) for x, mb in self.samples]}",
                    "samples": self.samples, "problems": []}
        (wx, warm), (ex, end) = after[0], after[-1]
        bound, peak = memory.rss_bound_mb(warm), max(mb for _, mb in self.samples)
        slope, hwm = memory.slope_mb_per_100_jobs(after), memory.status_mb(pid, "VmHWM")
        ok = memory.rss_within_bound(warm, end)
        line = (f"RSS after warm-up ({wx} jobs) {warm:.0f} MB, at the end ({ex} jobs) {end:.0f} MB "
                f"({end - warm:+.0f} MB, bound +{bound:.0f} MB: {'within' if ok else 'OVER'}), largest sample "
                f"{peak:.0f} MB, VmHWM {f'{hwm:.0f} MB' if hwm is not None else '?'}, slope {'?' if slope is None else f'{slope:+.1f}'} MB per 100 jobs "
                f"over {len(after)} samples")
        problems = [] if ok else [f"RSS grew {end - warm:+.0f} MB from the warm-up ({warm:.0f} MB) to the end, "
                                  f"over the bound of {bound:.0f} MB"]
        return {"line": line, "warmup_jobs": wx, "warmup_mb": warm, "end_jobs": ex, "end_mb": end,
                "bound_mb": bound, "max_sample_mb": peak, "vmhwm_mb": hwm, "slope_mb_per_100_jobs": slope,
                "within_bound": ok, "samples": self.samples, "problems": problems}
