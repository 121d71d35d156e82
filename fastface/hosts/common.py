"""Host-independent pieces of the WebUI integration: the per-job state, reversible patches, the
"never fail a generation" guard and the optional trace. Imports nothing from a WebUI.

One `Job` is created per generation (in the script's `process`) and hangs off the processing
object `p`; nothing about a job lives in module globals. Patches go through a `PatchSet`, which
remembers the original attribute and restores it on `undo()`; the live sets are also kept in a
registry so a job that died half way (A1111 skips `postprocess` after an exception) is cleaned
up at the start of the next one.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from ..method.attention import KernelSwitch
from ..method.transforms import TransformCache
from ..config import FastFaceArgs, Issue
from ..infotext import INFOTEXT_KEY, to_infotext

log = logging.getLogger("fastface")
if not log.handlers:  # the WebUIs print to stdout; keep FastFace lines visible and prefixed
    _handler = logging.StreamHandler(sys.stdout)
    _handler.setFormatter(logging.Formatter("[FastFace] %(message)s"))
    log.addHandler(_handler)
    log.setLevel(logging.INFO)
    log.propagate = False

NOTE_KEY = "FastFace note"
TRACE_KEY = "FastFace trace"
TRACE_ENV = "FASTFACE_TRACE"  # set to 1 on the server: per-step row counts and AM calls go to infotext


def note_value(notes) -> str:
    """The `FastFace note` infotext value: the notes as written, one after another.

    No escaping here: the WebUI's infotext writer JSON-quotes a value that holds ',' ':' or a
    newline (A1111 and Forge `infotext_utils.quote`) and its parser unquotes it again, so a note
    keeps its punctuation in the infotext, in PNG Info and in the API's `info`."""
    return "; ".join(str(n).strip() for n in notes)


def _without_face(args: FastFaceArgs, readout_runs: bool) -> str:
    """What a job without a face branch still does and what it does not."""
    effects = (["DCG runs without the face branch"] if args.dcg else []) \
        + (["no attention transform"] if args.am_mode != "off" else []) \
        + (["no likeness readout"] if args.readout and not readout_runs else [])
    return ", ".join(effects) or "FastFace changes nothing"


# A CFG++ sampler (Forge Neo's Euler / Euler a / DPM++ 2M CFG++, A1111's DDIM CFG++) renoises with
# the uncond prediction: FastFace keeps the real one on every step (both hosts, one note)
CFG_PP_NOTE = ("CFG++ sampler: it steps with DCG's result and renoises with the real uncond (negative prompt, "
               "no face), so FastFace evaluates the uncond on every step (3 rows per image); the CFG scale is not used")


def no_face_note(where: str, args: FastFaceArgs) -> str:
    """The note for a job without a FaceID unit: what still runs and what does not, e.g.
    'no FaceID unit in sd-webui-controlnet: DCG runs without the face branch, no attention
    transform, no likeness readout'."""
    return f"no FaceID unit in {where}: " + _without_face(args, readout_runs=False)


def note_units(job: "Job", kinds) -> None:
    """One note per identity-adapter kind the kind table has named in notes (`named_in_a_note`),
    e.g. 'InstantID unit: 16 face tokens (no background token), Invert first token does not apply to
    InstantID': which adapter FastFace found, and that the option for FaceID-Plus-v2's background
    token is not used for it."""
    for kind in kinds:
        if kind is not None and kind.named_in_a_note:
            job.note(f"{kind.label} unit: {kind.tokens[0]} face tokens (no background token), Invert first token "
                     f"does not apply to {kind.label}")


def _listed(names: list[str], conjunction: str = "and") -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" {conjunction} " + names[-1]


def not_applied_note(models: list[str], args: FastFaceArgs, readout_runs: bool) -> str:
    """The note for a job whose request had IP-Adapter units (`models`: their model names) but
    whose host installed no IP-Adapter layers: the WebUI logged an error and dropped the units
    (e.g. Forge Neo's CLIP-Vision bug, or no insightface), so "no FaceID unit" would mislead.
    `readout_runs`: the likeness readout still compares with a FaceID / PuLID unit's image (it
    reads the request, not the host's layers)."""
    unit = "unit" if len(models) == 1 else "units"
    # a comma, not a semicolon, inside the parentheses: "; " separates the notes in the infotext
    return (f"the ControlNet {unit} with {_listed(models)} installed no IP-Adapter layers (the WebUI's "
            "IP-Adapter did not apply, its error is in the server log): " + _without_face(args, readout_runs))


def rejected_note(issue: Issue) -> str:
    return f"rejected {issue.field} ({issue.message})"


# -- out of memory ---------------------------------------------------------------------------------
# torch ≥ 2.5 has torch.OutOfMemoryError (torch.cuda.OutOfMemoryError is the same class there);
# older torch only the CUDA one. One tuple for `except` and `isinstance`.
OUT_OF_MEMORY: tuple = tuple(dict.fromkeys(
    cls for cls in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None))
    if isinstance(cls, type)))
# Where FastFace's own memory ran out (the note names it; each has its own advice)
IN_FASTFACE = "its own work"
IN_FACE_BRANCH = "the face branch"
IN_EXTRA_ROWS = "the UNet call that carries DCG's extra rows"
IN_DCG = "DCG's id-only branch and combination"
IN_PREVIEW = "the face attention preview"
IN_READOUT = "the likeness readout"


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, OUT_OF_MEMORY)


def free_cached_memory() -> None:
    """Give the allocator's cached blocks back after an out-of-memory error, only where CUDA is
    already in use (never initialise it). Call it after the `except` block: until then the
    traceback keeps the failed attempt's tensors alive."""
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def out_of_memory_note(place: str, args: FastFaceArgs) -> str:
    """The note of a job whose own memory ran out: where, that FastFace is off, what to try.
    DCG's extra rows are named only where they cost memory (the rows call; the face branch runs
    on every row, so fewer rows help there too)."""
    if place in (IN_EXTRA_ROWS, IN_DCG):
        advice = ["a preset without DCG"]
    elif place == IN_READOUT:
        advice = ["the likeness readout off"]
    else:   # the face branch (and its preview) runs on every row of the call; anything else of FastFace's
        advice = (["a preset without DCG"] if args.dcg else []) \
            + (["Show face attention off"] if args.show_attention else [])
    # a comma, not a semicolon: "; " separates the notes in the infotext
    return (f"FastFace ran out of GPU memory in {place} and turned itself off for the rest of this generation: "
            f"try {_listed(advice + ['a smaller batch', 'a smaller size'], 'or')}")


class PatchSet:
    """Attribute patches that can all be undone, newest first."""

    live: "list[PatchSet]" = []  # sets not yet undone (undone at the next job if a job crashed)

    def __init__(self, name: str):
        self.name = name
        self._undo: list[Callable[[], None]] = []
        PatchSet.live.append(self)

    def setattr(self, obj: Any, attr: str, value: Any) -> None:
        """setattr(obj, attr, value), undone by restoring the object's *own* previous attribute
        (or deleting it, so an instance patch falls back to the class again)."""
        own = obj.__dict__  # a class's mappingproxy or an instance's dict
        had, old = attr in own, own.get(attr)

        def restore():
            if had:
                setattr(obj, attr, old)
            elif attr in obj.__dict__:
                delattr(obj, attr)

        setattr(obj, attr, value)
        self._undo.append(restore)

    def on_undo(self, fn: Callable[[], None]) -> None:
        self._undo.append(fn)

    def undo(self) -> None:
        while self._undo:
            try:
                self._undo.pop()()
            except Exception as exc:  # undo as much as possible
                log.warning("could not undo a patch (%s): %s", self.name, exc)
        if self in PatchSet.live:
            PatchSet.live.remove(self)

    def __len__(self) -> int:
        return len(self._undo)

    @classmethod
    def undo_all(cls) -> int:
        count = 0
        for patches in list(cls.live):
            count += len(patches)
            patches.undo()
        return count


@dataclass
class StepTracker:
    """Which sampler step a model call belongs to, from the sampler's callbacks, not call counts.

    Both WebUIs pass `callback_state` to k-diffusion, which calls it after the *first* model call
    of every step (k_diffusion/sampling.py; A1111 and Forge sd_samplers_common.py). So a call right
    after a callback is the next step for first-order samplers and the corrector of the called-back
    step for second-order ones (Heun, DPM2, DPM++ 2S a, DPM++ SDE: the WebUIs mark them with
    total_steps = 2·steps); a call right after a call is the same step for first-order samplers
    (PLMS's start-up call) and the next one for second-order samplers."""

    calls: int = 0                   # model calls seen so far in this pass
    step: int = 0                    # sampler step of the current model call
    total: int = 1                   # sampler steps of this pass
    last_callback: Optional[int] = None
    callback_since_call: bool = False
    timestep_count: Optional[int] = None  # timestep samplers: len(timesteps) − 1 model steps

    def on_callback(self, step_index: int) -> None:
        self.last_callback = int(step_index)
        self.callback_since_call = True

    def on_model_call(self, steps: int, total_steps: Optional[int]) -> tuple[int, int]:
        """Advance for a model call of a pass of `steps` sampler steps (the timestep sampler's own
        count where it told one); returns (step, total)."""
        total = max(int(self.timestep_count or steps or 1), 1)
        second_order = int(total_steps or total) >= 2 * total
        if self.calls == 0:
            step = 0
        elif self.callback_since_call:
            step = self.last_callback if second_order else self.last_callback + 1
        elif self.last_callback is None:
            step = self.calls // (2 if second_order else 1)  # a sampler that never calls back
        else:
            step = self.step + 1 if second_order else self.step
        self.calls += 1
        self.callback_since_call = False
        self.step, self.total = min(max(step, 0), total - 1), total
        return self.step, self.total


def is_timestep_denoiser(den: Any) -> bool:
    """The CFG denoiser of A1111's and the Forge family's DDIM / PLMS / UniPC (`CFGDenoiserTimesteps`):
    its model returns ε and takes integer timesteps."""
    return type(den).__name__ == "CFGDenoiserTimesteps" or hasattr(den, "alphas")


def is_timestep_sampler(sampler: Any) -> bool:
    """A timestep sampler (`CompVisSampler`): it loops over len(timesteps) − 1 steps, one fewer than `steps`."""
    return callable(getattr(sampler, "func", None)) and is_timestep_denoiser(getattr(sampler, "model_wrap_cfg", None))


def track_timestep_count(patches: "PatchSet", sampler: Any, tracker: StepTracker) -> None:
    """Read a timestep sampler's real step count from its call (sd_samplers_timesteps.py passes
    `timesteps` to `self.func`; the loop runs len(timesteps) − 1 steps, sd_samplers_timesteps_impl.py),
    so the last step is the last one DCG's schedule sees."""
    original_func = sampler.func

    @functools.wraps(original_func)  # sample() inspects the signature for `timesteps`
    def func(*a, **kw):
        timesteps = kw.get("timesteps")
        if timesteps is not None:
            tracker.timestep_count = max(len(timesteps) - 1, 1)
        return original_func(*a, **kw)

    patches.setattr(sampler, "func", func)


@dataclass
class Job:
    """Everything FastFace knows about one generation."""

    args: FastFaceArgs
    host: str = ""
    issues: list[Issue] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failed: Optional[str] = None      # set by `fail`: FastFace is off for the rest of the job
    out_of_memory: Optional[str] = None   # set by `fail` when it was FastFace's memory: where (IN_*)
    in_denoiser_call: bool = False    # inside a denoiser call `guard_denoiser` makes again on an OOM
    patches: Optional[PatchSet] = None
    # trace: UNet rows and UNet calls per (pass, step), face-attention transforms per (pass, step, part)
    rows: dict = field(default_factory=lambda: defaultdict(int))
    calls: dict = field(default_factory=lambda: defaultdict(int))
    am_calls: Counter = field(default_factory=Counter)
    am_adapters: Counter = field(default_factory=Counter)   # transformed calls per adapter kind
    adapter_facts: dict = field(default_factory=dict)       # what a host learnt once about an adapter
    passes: int = 0
    # host scratch for the running pass (set and cleared by the host adapter)
    current_pass: Any = None
    layer_part: Optional[str] = None     # UNet part of the attn2 layer now running
    installed: set = field(default_factory=set)
    recording: Any = None                # "Show face attention" (hosts/recording.py); None when off
    # face branch: fused kernels allowed until one fails; transforms built once per key
    kernels: KernelSwitch = field(default_factory=KernelSwitch)
    _transforms: Optional[TransformCache] = None

    @property
    def transforms(self) -> TransformCache:
        if self._transforms is None or self._transforms.args is not self.args:
            self._transforms = TransformCache(self.args)
        return self._transforms

    @property
    def active(self) -> bool:
        return self.args.enabled and self.failed is None

    def note(self, text: str) -> None:
        """A one-time message: printed once and written to the infotext."""
        if text not in self.notes:
            self.notes.append(text)
            log.info(text)

    def fail(self, where: str, exc: BaseException, place: str = IN_FASTFACE) -> None:
        """Turn FastFace off for this job after an internal error; the image still comes out.

        An out-of-memory error gets its own note (`place`: where FastFace's memory ran out, one
        of the IN_* names) instead of "internal error", and FastFace drops what it holds."""
        if self.failed is None:
            self.failed = f"{where}: {type(exc).__name__}: {exc}"
            if is_out_of_memory(exc):
                self.out_of_memory = place
                text = out_of_memory_note(place, self.args)
                self.notes.append(text)
                log.error("%s (%s: %s)", text, where, type(exc).__name__)
            else:
                log.error("internal error in %s (%s: %s); FastFace is off for the rest of this job",
                          where, type(exc).__name__, exc)
        if self.patches is not None:
            self.patches.undo()
        if self.out_of_memory is not None:
            self.drop_held()

    def fail_in_call(self, where: str, exc: BaseException, place: str = IN_FASTFACE) -> None:
        """`fail` for FastFace's work inside a model call. An out-of-memory error is raised on
        when `guard_denoiser` is around the call: it unwinds the call (freeing its rows at once)
        and the guard makes the call again the host's own way. Elsewhere, or for another error,
        the caller goes on with the host's code as after `fail`."""
        self.fail(where, exc, place)
        if self.in_denoiser_call and is_out_of_memory(exc):
            raise exc

    def drop_held(self) -> None:
        """Forget what FastFace holds for this job: the recorded maps and the transform cache."""
        self.recording = None
        self._transforms = None

    def infotext_params(self) -> dict[str, str]:
        params = {INFOTEXT_KEY: to_infotext(self.args)}
        notes = list(self.notes)
        if self.failed and self.out_of_memory is None:   # out of memory has its own note
            notes.append("turned off after an internal error")
        notes += [rejected_note(i) for i in self.issues if i.rejected]
        if notes:
            params[NOTE_KEY] = note_value(notes)
        if os.environ.get(TRACE_ENV) == "1":
            params[TRACE_KEY] = self.trace_json()
        return params

    def count_unet_call(self, pas: int, step: int, rows: int) -> None:
        """One UNet forward of `rows` rows in sampler step `step` of pass `pas` (trace)."""
        self.rows[(pas, step)] += rows
        self.calls[(pas, step)] += 1

    def trace_json(self) -> str:
        rows = {f"{pas}/{step}": n for (pas, step), n in sorted(self.rows.items())}
        calls = {f"{pas}/{step}": n for (pas, step), n in sorted(self.calls.items())}
        am = {f"{pas}/{step}/{part}": n for (pas, step, part), n in sorted(self.am_calls.items())}
        trace = {"rows": rows, "calls": calls, "am": am}
        if self.am_adapters:
            trace["am_adapters"] = dict(sorted(self.am_adapters.items()))
        return json.dumps(trace, separators=(",", ":"))


def guarded(where: str, fallback: Callable[..., Any] | None = None, place: str = IN_FASTFACE):
    """Decorator for host hooks that receive the job first: an exception turns FastFace off for
    the job (one log line) and returns `fallback(*args)` (or None), so the generation goes on.
    `place`: what an out-of-memory error there is called in the note."""
    def wrap(fn):
        @functools.wraps(fn)
        def inner(job: Job, *args, **kwargs):
            try:
                return fn(job, *args, **kwargs)
            except Exception as exc:
                job.fail(where, exc, place)
                return fallback(*args, **kwargs) if fallback is not None else None
        return inner
    return wrap


def guard_denoiser(job: Job, patches: PatchSet, den: Any, st: StepTracker,
                   extra_rows: Callable[[], bool] = lambda: False,
                   before_host_call: Callable[[], None] = lambda: None) -> bool:
    """Out of memory inside a model call: FastFace's, or the host's.

    Patches this pass's CFG denoiser (`den.forward`, an instance attribute: A1111's and Forge's
    samplers call the denoiser module, whose `__call__` runs `self.forward`). An out-of-memory
    error in a call is FastFace's when FastFace turned itself off for it during the call (its
    face branch, its combination, its own UNet call: `Job.fail_in_call`) or when the call carries
    FastFace's extra rows (`extra_rows()`, asked only if this call reached the host's row
    arrangement, i.e. `st` counted it). Then FastFace is off (patches undone), the failed
    attempt's memory is given back, and the call is made again through the host's own forward,
    which lays out and evaluates its own rows: the step is the host's, in the shape it expects.
    Any other out-of-memory error is the host's: FastFace undoes its patches and lets it through.

    Per call: one Python frame, a try and two attribute stores; nothing on the device.
    Returns False (nothing installed) for a denoiser that is not a torch module."""
    original = getattr(den, "forward", None)
    if getattr(original, "_fastface_guard", False):   # this denoiser's pass was set up twice (Forge's hires)
        return True
    if not isinstance(den, torch.nn.Module) or not callable(original):
        log.info("the sampler's CFG denoiser is not a torch module: an out-of-memory error inside FastFace's "
                 "work falls back layer by layer (no recomputed step)")
        return False

    def forward(*args, **kwargs):
        if not job.active:   # off since an earlier call: the host's call as it is
            return original(*args, **kwargs)
        calls = st.calls
        job.in_denoiser_call = True
        try:
            return original(*args, **kwargs)
        except OUT_OF_MEMORY as exc:
            ours = job.out_of_memory is not None or (st.calls != calls and extra_rows())
            if not ours:
                job.drop_held()
                if job.patches is not None:
                    job.patches.undo()
                log.error("the WebUI ran out of memory in its own work (%s); FastFace undid its patches", exc)
                raise
            job.fail("the denoiser call", exc, IN_EXTRA_ROWS)   # a no-op where the face branch failed first
        finally:
            job.in_denoiser_call = False
        # outside the `except`: the traceback (and the failed attempt's tensors) is gone
        free_cached_memory()
        before_host_call()
        return original(*args, **kwargs)

    forward._fastface_guard = True
    patches.setattr(den, "forward", forward)
    return True
