"""The soak's job mix (tests/webui/soak.py): N jobs, deterministic for a seed and a sampler list.

Pure: no server, no clock. Values are dealt from shuffled decks rather than drawn independently,
so every value of a deck comes up once per deck round: a mix of N ≥ 100 jobs holds every
category (`required_labels`) for any seed, not just probably.

Layout of a plan:
- a fixed head, so the warm-up holds every kind of job before the memory baseline is taken:
  the disabled reference (job 0), a first img2img (the first img2img of a fresh A1111 gives other
  pixels than later identical ones, test_real_webui.py; no repeated job may be the first), the
  largest job (batch 4, hires fix, previews, CFG > 1), the first run of each repeated
  FastFace configuration, a bad input, an interrupt, a skip, a disabled job without FastFace args;
- then blocks of kinds, shuffled per block;
- the cost of a job on a CPU is its UNet evaluations (steps × rows × batch), so the mix keeps every
  category but leans to the cheap end: step counts 1–4 (what distilled models run) come round
  twice as often as 5–8, batch 1 half the time, hires fix one job in five, the disabled reference
  at 2 steps, and the samplers drawn from the server's list are the one-evaluation-per-step ones
  (`MULTI_EVALUATION_SAMPLERS` are left out: Heun or DPM adaptive cost 2× to 10× a step; every
  sampler is run by test_real_webui.py's test_every_sampler_of_the_host_with_dcg);
- a window in the middle (40–60 % of the jobs) where every other job goes to a second client,
  sent concurrently; no interrupt or skip there (they would hit whichever job runs).
"""
from __future__ import annotations

import dataclasses
import random

from fastface.config import PRESET_NAMES
from test_config import WRONG_KIND_VALUES

# on A1111, Forge 2 and Neo alike (test_real_webui.py SAMPLERS for Forge)
FIXED_SAMPLERS = ("Euler", "Euler a", "DPM++ 2M", "LCM")
# JSON has no NaN: Python writes it anyway, and A1111 then fails to write its answer, which echoes
# the request (HTTP 500 "Out of range float values are not JSON compliant", FastFace on or off)
BAD_INPUTS = [(f, v) for f, v in WRONG_KIND_VALUES if v == v] + [("nonsense", 1)]   # last: an unknown field
KINDS = ("off", "repeat", "random", "img2img", "bad", "interrupt", "skip")
MAIN_BLOCK = ["off"] * 3 + ["repeat"] * 4 + ["random"] * 5 + ["img2img"] * 2 + ["bad"] * 3 + ["interrupt"] * 2 + ["skip"]
WINDOW_BLOCK = ["off"] * 2 + ["repeat"] * 2 + ["random"] * 4 + ["img2img", "bad"]
WINDOW = (0.4, 0.6)

# Samplers that evaluate the model more than once per step (or as often as they like): left out of
# the drawn samplers, by name as A1111 and the Forge family list them
MULTI_EVALUATION_SAMPLERS = frozenset({"Heun", "DPM2", "DPM2 a", "DPM++ 2S a", "DPM++ SDE", "DPM adaptive",
                                       "Restart", "DPM++ 2s a RF", "Kohaku LoNyu Yog"})
# Random txt2img step counts: 1–8 each round, the few-step range twice
TXT_STEPS = (*range(1, 9), 1, 2, 3, 4)
# The disabled job every other disabled job must equal (FastFace args: a dict, or none at all)
OFF_ARGS = {"enabled": False, "preset": "Realistic"}
OFF_SETTINGS = {"steps": 2}
# The repeated FastFace jobs: (endpoint, FastFace args, settings); each run must equal its first
REPEATS = (
    ("txt2img", {"enabled": True, "preset": "Realistic"},
     {"steps": 3, "sampler_name": "Euler", "cfg_scale": 1.0, "batch_size": 1, "seed": 1234}),
    ("txt2img", {"enabled": True, "preset": "Stylistic", "readout": False},
     {"steps": 2, "sampler_name": "Euler a", "cfg_scale": 2.5, "batch_size": 2, "seed": 99}),
    ("txt2img", {"enabled": True, "preset": "Realistic portrait", "show_attention": True},
     {"steps": 2, "sampler_name": "DPM++ 2M", "cfg_scale": 1.0, "batch_size": 1, "seed": 7, "hires": True}),
    ("img2img", {"enabled": True, "preset": "Realistic"},
     {"steps": 3, "sampler_name": "Euler", "cfg_scale": 2.0, "batch_size": 1, "seed": 55, "denoising_strength": 0.7}),
)


@dataclasses.dataclass(frozen=True)
class SoakJob:
    index: int
    kind: str                      # one of KINDS
    client: int                    # 1, or 2 for the second client's jobs
    endpoint: str                  # "txt2img" | "img2img"
    fastface: dict | None          # the FastFace script argument (None: not sent)
    settings: dict                 # steps, sampler_name, cfg_scale, batch_size, seed, [n_iter,
    #                                denoising_strength, hires]
    compare: str | None = None     # "off" or "repeat:<k>": pixels must equal the first such job's
    action: str | None = None      # "interrupt" | "skip", sent from another thread mid-job
    bad_field: str | None = None   # the field a bad input gets rejected for

    @property
    def enabled(self) -> bool:
        return bool(self.fastface and self.fastface.get("enabled"))


class _Deck:
    """Deals `values` in a fresh shuffled order each round."""

    def __init__(self, rng: random.Random, values):
        self.rng, self.values, self.left = rng, list(values), []

    def deal(self):
        if not self.left:
            self.left = self.rng.sample(self.values, len(self.values))
        return self.left.pop()


class _Family:
    """The decks of one family of jobs. The random txt2img jobs have a family of their own, so
    what they must cover (every preset, step count, batch size, …) never depends on how many
    img2img, interrupt or skip jobs took from the same deck."""

    def __init__(self, rng: random.Random, samplers: list[str], steps):
        self.rng = rng
        self.preset = _Deck(rng, PRESET_NAMES)
        self.steps = _Deck(rng, steps)
        self.fixed_sampler = _Deck(rng, [s for s in FIXED_SAMPLERS if s in samplers] or samplers)
        self.any_sampler = _Deck(rng, [s for s in samplers if s not in MULTI_EVALUATION_SAMPLERS] or samplers)
        self.turn = 0                                      # fixed and listed samplers take turns
        self.cfg = _Deck(rng, [1.0, 1.0, 1.0, 2.0, 4.0, 7.0])
        self.batch = _Deck(rng, [1, 1, 1, 2, 3, 4])
        self.hires = _Deck(rng, [True, False, False, False, False])
        self.show = _Deck(rng, [True, False, False])
        self.readout = _Deck(rng, [True, False])

    def sampler(self) -> str:
        self.turn += 1
        return (self.fixed_sampler if self.turn % 2 else self.any_sampler).deal()

    def seed(self) -> int:
        return self.rng.randrange(2 ** 31)


class _Dealer:
    """Every deck of the plan, from one seeded generator."""

    def __init__(self, rng: random.Random, samplers: list[str]):
        self.kinds = _Deck(rng, MAIN_BLOCK)
        self.window_kinds = _Deck(rng, WINDOW_BLOCK)
        self.txt = _Family(rng, samplers, TXT_STEPS)
        self.other = _Family(rng, samplers, range(2, 9))   # img2img runs int(steps · strength) of them
        self.strength = _Deck(rng, [0.4, 0.6, 0.8])
        self.img2img_on = _Deck(rng, [True, True, True, False])
        self.off_form = _Deck(rng, [True, True, False])    # False: no FastFace args at all
        self.repeat = _Deck(rng, range(len(REPEATS)))
        self.bad = 0                                       # bad inputs go round in order


def _job(d: _Dealer, index: int, kind: str, client: int = 1, **force) -> SoakJob:
    if kind == "off":
        args = dict(OFF_ARGS) if force.get("off_form", d.off_form.deal()) else None
        return SoakJob(index, kind, client, "txt2img", args, dict(OFF_SETTINGS), compare="off")
    if kind == "repeat":
        k = force.get("repeat", None)
        k = d.repeat.deal() if k is None else k
        endpoint, args, settings = REPEATS[k]
        return SoakJob(index, kind, client, endpoint, dict(args), dict(settings), compare=f"repeat:{k}")
    if kind == "bad":
        field, value = BAD_INPUTS[d.bad % len(BAD_INPUTS)]
        d.bad += 1
        args = {"enabled": True, "preset": "Realistic", field: value}
        return SoakJob(index, kind, client, "txt2img", args, {"steps": 2}, bad_field=field)
    f = d.txt if kind == "random" else d.other
    if kind in ("interrupt", "skip"):
        # long enough to be caught mid-way; two iterations so a skip has one to go on with; a
        # fixed sampler (DPM adaptive picks its own, often many, evaluations for the second one)
        args = {"enabled": True, "preset": f.preset.deal(), "readout": f.readout.deal()}
        settings = {"steps": 3, "sampler_name": f.fixed_sampler.deal(), "cfg_scale": 2.5, "batch_size": 1,
                    "n_iter": 2, "seed": f.seed()}
        return SoakJob(index, kind, client, "txt2img", args, settings, action=kind)
    args = {"enabled": True, "preset": f.preset.deal(), "show_attention": force.get("show", f.show.deal()),
            "readout": f.readout.deal()}
    settings = {"sampler_name": f.sampler(), "cfg_scale": force.get("cfg", f.cfg.deal()),
                "batch_size": force.get("batch", f.batch.deal()), "steps": force.get("steps", f.steps.deal()),
                "seed": f.seed()}
    if kind == "img2img":
        args["enabled"] = d.img2img_on.deal()
        settings["denoising_strength"] = d.strength.deal()
        return SoakJob(index, kind, client, "img2img", args, settings)
    settings["hires"] = force.get("hires", f.hires.deal())
    return SoakJob(index, kind, client, "txt2img", args, settings)


def _head(d: _Dealer) -> list[SoakJob]:
    jobs = [_job(d, 0, "off", off_form=True), _job(d, 1, "img2img"),
            _job(d, 2, "random", batch=4, hires=True, show=True, steps=4, cfg=4.0)]
    jobs += [_job(d, len(jobs) + k, "repeat", repeat=k) for k in range(len(REPEATS))]
    for kind in ("bad", "interrupt", "skip"):
        jobs.append(_job(d, len(jobs), kind))
    jobs.append(_job(d, len(jobs), "off", off_form=False))
    return jobs


def window(n: int) -> range:
    """The job indices where the second client is active."""
    return range(int(n * WINDOW[0]), int(n * WINDOW[1]))


def make_plan(n: int, seed: int, samplers: list[str]) -> list[SoakJob]:
    """N jobs for `seed`; `samplers` is what the server lists (FIXED_SAMPLERS it lacks are left out)."""
    if not samplers:
        raise ValueError("no samplers")
    d = _Dealer(random.Random(seed), list(samplers))
    jobs = _head(d)[:n]
    second = window(n)
    turn = 0
    for index in range(len(jobs), n):
        if index in second:
            turn += 1
            jobs.append(_job(d, index, d.window_kinds.deal(), client=2 if turn % 2 == 0 else 1))
        else:
            jobs.append(_job(d, index, d.kinds.deal()))
    return jobs


def labels(job: SoakJob) -> set[str]:
    """The categories one job stands for (what `required_labels` asks a plan to cover)."""
    out = {f"kind:{job.kind}", f"endpoint:{job.endpoint}", f"client:{job.client}"}
    s = job.settings
    if job.enabled and job.bad_field is None:
        out.add(f"preset:{job.fastface['preset']}")
        out.add(f"show_attention:{bool(job.fastface.get('show_attention'))}")
        out.add(f"readout:{job.fastface.get('readout', True) is not False}")
    if job.kind == "random":
        out |= {f"steps:{s['steps']}", f"batch:{s['batch_size']}", f"hires:{s['hires']}",
                "cfg:1" if s["cfg_scale"] == 1.0 else "cfg:>1"}
    if "sampler_name" in s:
        out.add(f"sampler:{s['sampler_name']}")
    if job.bad_field:
        out.add(f"bad:{job.bad_field}")
    return out


def required_labels(samplers: list[str]) -> set[str]:
    """What a plan of N ≥ 100 jobs covers: every kind, endpoint, client, preset, 1–8 steps, batch
    1–4, CFG 1 and > 1, hires fix, show_attention and the readout on and off, the first bad inputs
    (one per block of 20: BAD_INPUTS go round over longer runs), the fixed samplers."""
    out = {f"kind:{k}" for k in KINDS} | {"endpoint:txt2img", "endpoint:img2img", "client:1", "client:2"}
    out |= {f"preset:{p}" for p in PRESET_NAMES} | {f"steps:{k}" for k in range(1, 9)}
    out |= {f"batch:{b}" for b in range(1, 5)} | {"cfg:1", "cfg:>1", "hires:True", "hires:False"}
    out |= {"show_attention:True", "show_attention:False", "readout:True", "readout:False"}
    out |= {f"bad:{field}" for field, _ in BAD_INPUTS[:5]}
    out |= {f"sampler:{s}" for s in FIXED_SAMPLERS if s in samplers}
    return out


def coverage_gaps(plan: list[SoakJob], samplers: list[str]) -> list[str]:
    seen = set().union(*(labels(j) for j in plan)) if plan else set()
    return sorted(required_labels(samplers) - seen)
