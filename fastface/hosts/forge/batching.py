"""Forge DCG: the id-only rows (negative text + face) ride inside Forge's own UNet call.

On a step that needs them, the pre-CFG function (`dcg`) picks a plan (`id_plan`) and the
`model_function_wrapper` installed here carries it out inside `calc_cond_uncond_batch`: the
negative rows relabelled COND (two branches), or a COND copy of them appended (three branches).
Where the ControlNets read the labels (InstantID's IdentityNet gets the face tokens as its context
on COND rows only), the id-only rows' ControlNet signal is recomputed as a COND chunk gets it,
since Forge computes the signal before the wrapper runs.
"""
from __future__ import annotations

from typing import Optional

import torch

from ...method.schedule import branches_needed
from ..common import IN_EXTRA_ROWS, Job, is_out_of_memory
from .state import ForgePass

# How the id-only branch (negative text + face) reaches the UNet on a step, decided per model call
# by the pre-CFG function and carried out by the `model_function_wrapper` inside Forge's own
# `calc_cond_uncond_batch` (sampling_function.py L270-271; Gen1 samplers.py L282-291):
ID_IN_UNCOND = "id-only rows in the uncond slot"   # two branches: the negative rows are relabelled COND
ID_APPENDED = "id-only rows appended"              # three branches: a COND copy of the negative rows
COND, UNCOND = 0, 1                                # calc_cond_uncond_batch's chunk labels (L161-162)
ID_ONLY = 2                                        # FastFace's own label for id-only chunks
CHUNKS_KEY = "fastface_chunks"                     # transformer option: the chunks' real labels
# Why relabel rather than force the face onto UNCOND rows in FastFace's attn2 wrapper: the face
# stays Forge's own IP-Adapter code (also with AM off, for every adapter and weight type), and
# everything else inside the UNet that reads the labels sees what a separate COND call would show
# it, so the values equal the separate call's exactly.
CN_WEIGHTINGS = ("positive_advanced_weighting", "negative_advanced_weighting", "advanced_frame_weighting",
                 "advanced_sigma_weighting", "advanced_mask_weighting")  # backend/patcher/controlnet.py L87-91


def ours(fn) -> bool:
    return bool(getattr(fn, "_fastface", False))


def _batchable(uncond) -> bool:
    """One plain negative entry (no area, mask or strength): its chunk's output is the uncond
    prediction itself (calc_cond_uncond_batch divides by a count of 1 + 1e-37 = 1), so a copy of
    the chunk labelled COND gives exactly what a separate COND call would."""
    if not isinstance(uncond, (list, tuple)) or len(uncond) != 1 or not isinstance(uncond[0], dict):
        return False
    entry = uncond[0]
    return not any(k in entry for k in ("area", "mask")) and entry.get("strength", 1.0) == 1.0


def id_plan(job: Job, st: ForgePass, uncond_, droppable: bool) -> Optional[str]:
    """How this step's id-only rows ride in Forge's own call (None: no id-only rows are needed,
    there is no face, or they take a separate call)."""
    need = branches_needed(st.step, st.total, job.args)
    if not (need.id_only and st.face and st.batched and uncond_ is not None and _batchable(uncond_)):
        return None
    return ID_IN_UNCOND if droppable else ID_APPENDED


def _relabelled(args) -> dict:
    """The wrapper's arguments with every chunk labelled COND: the IP-Adapter (and anything else
    that reads the labels inside the UNet) gives the negative rows the face, as in the authors'
    ε(∅, c_id). `calc_cond_uncond_batch` still files the output under its own (UNCOND) labels."""
    c = dict(args["c"])
    options = dict(c.get("transformer_options") or {})
    labels = [COND] * len(args["cond_or_uncond"])
    options["cond_or_uncond"] = labels
    options[CHUNKS_KEY] = list(args["cond_or_uncond"])   # what each chunk really is (the preview reads it)
    if isinstance(options.get("cond_mark"), torch.Tensor):    # per-row 0/1 (L256): all cond now
        options["cond_mark"] = torch.zeros_like(options["cond_mark"])
    if "cond_indices" in options:                            # L257
        options["cond_indices"] = sorted(list(options["cond_indices"]) + list(options.get("uncond_indices") or []))
        options["uncond_indices"] = []
    c["transformer_options"] = options
    return dict(args, c=c, cond_or_uncond=labels)


def _map_rows(value, rows: int, fn):
    """`value` with `fn` applied to every per-row tensor in it (leading dimension `rows`: c_crossattn,
    y, c_concat, the ControlNet signals), through dicts, lists and tuples; anything else unchanged."""
    if isinstance(value, torch.Tensor):
        return fn(value) if value.dim() > 0 and value.shape[0] == rows else value
    if isinstance(value, dict):
        return {k: _map_rows(v, rows, fn) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_map_rows(v, rows, fn) for v in value)
    return value


def _append_rows(value, rows: int, start: int, stop: int):
    """`value` with rows [start, stop) repeated at the end, for every per-row tensor in it."""
    return _map_rows(value, rows, lambda t: torch.cat([t, t[start:stop]]))


def _rows_of(value, rows: int, start: int, stop: int):
    """Rows [start, stop) of every per-row tensor in `value`."""
    return _map_rows(value, rows, lambda t: t[start:stop])


def _negative_rows(args) -> tuple[int, int]:
    """[start, stop): the rows of the call's negative (UNCOND) chunk."""
    labels = list(args["cond_or_uncond"])
    per_chunk = args["input"].shape[0] // len(labels)
    start = labels.index(UNCOND) * per_chunk
    return start, start + per_chunk


def _with_id_rows(args, start: int, stop: int, own_control: bool = False) -> tuple[dict, int]:
    """The wrapper's arguments plus one chunk: a copy of the negative (UNCOND) chunk, rows
    [start, stop), labelled COND, i.e. the id-only rows. Returns (new args, rows of the original
    call). `own_control`: the caller puts in the ControlNet signal of those rows itself
    (`_with_cond_control`), so the host's is not copied here."""
    labels = list(args["cond_or_uncond"])
    x = args["input"]
    rows, per_chunk = x.shape[0], stop - start
    passed = ("transformer_options", "control_model") + (("control",) if own_control else ())
    c = {}
    for key, value in args["c"].items():
        if key in passed:
            c[key] = value
        else:
            c[key] = _append_rows(value, rows, start, stop)
    options = dict(c.get("transformer_options") or {})
    options["cond_or_uncond"] = labels + [COND]
    options[CHUNKS_KEY] = labels + [ID_ONLY]
    mark = options.get("cond_mark")
    if isinstance(mark, torch.Tensor):
        options["cond_mark"] = torch.cat([mark, torch.zeros_like(mark[start:stop])])
    if "cond_indices" in options:
        options["cond_indices"] = list(options["cond_indices"]) + list(range(rows, rows + per_chunk))
    c["transformer_options"] = options
    new = dict(args, input=torch.cat([x, x[start:stop]]),
               timestep=_append_rows(args["timestep"], rows, start, stop), c=c,
               cond_or_uncond=labels + [COND])
    return new, rows


# -- a ControlNet that reads the labels: InstantID's IdentityNet ---------------------------------------
def _control_reads_labels(c) -> bool:
    """Forge computes the ControlNet signal *before* `model_function_wrapper` (sampling_function.py
    L261-268), from the host's labels. Where a conditioning modifier of the ControlNets makes the
    signal depend on them — InstantID's, which gives IdentityNet the face tokens on COND rows and
    Resampler(0) on UNCOND rows (IPAdapterPlus.py L734-741; Forge applies it to every ControlNet
    unit, backend/patcher/controlnet.py L292-296) — the relabelled or appended id-only rows need the
    signal a COND chunk gets."""
    options = c.get("transformer_options") or {}
    return c.get("control_model") is not None and bool(options.get("controlnet_conditioning_modifiers"))


def _control_as_cond(args, start: int, stop: int):
    """The ControlNet signal of the call's rows [start, stop) as one COND chunk gets it: the chain's
    own `get_control` on those rows alone, with the transformer options Forge sets for such a chunk
    (L253-266: labels, `cond_mark` 0, indices), put on every ControlNet of the chain for the call
    and put back after it."""
    c, x = args["c"], args["input"]
    rows, per_chunk = x.shape[0], stop - start
    options = dict(c["transformer_options"])
    options["cond_or_uncond"] = [COND]
    if isinstance(options.get("cond_mark"), torch.Tensor):
        options["cond_mark"] = torch.zeros_like(options["cond_mark"][start:stop])
    if "cond_indices" in options:
        options["cond_indices"], options["uncond_indices"] = list(range(per_chunk)), []
    sub = {k: _rows_of(v, rows, start, stop) for k, v in c.items() if k not in ("transformer_options", "control",
                                                                                  "control_model")}
    sub["transformer_options"] = options
    chain, node = [], c["control_model"]
    while node is not None and len(chain) < 64:
        chain.append((node, getattr(node, "transformer_options", None)))
        node.transformer_options = options
        node = getattr(node, "previous_controlnet", None)
    try:
        return c["control_model"].get_control(x[start:stop], args["timestep"][start:stop], sub, 1)
    finally:
        for node, previous in chain:
            node.transformer_options = previous


def _spliced(control, id_control, rows: int, start: int, stop: int, append: bool):
    """The call's ControlNet signals ({"input": [...], "middle": [...], …}, per-row tensors or None)
    with rows [start, stop) replaced by `id_control`'s (or `id_control`'s appended: `append`)."""
    if control is None and id_control is None:
        return None
    out = {}
    for key, signals in control.items():
        new = []
        for i, signal in enumerate(signals):
            mine = id_control[key][i]
            if signal is None and mine is None:
                new.append(None)
            elif isinstance(signal, torch.Tensor) and isinstance(mine, torch.Tensor) and signal.shape[0] == rows \
                    and mine.shape[0] == stop - start:
                new.append(torch.cat([signal, mine]) if append else torch.cat([signal[:start], mine, signal[stop:]]))
            else:
                raise ValueError(f"a ControlNet signal FastFace cannot split by rows ({key} {i})")
        out[key] = new
    return out


def _with_cond_control(new: dict, args, start: int, stop: int, append: bool) -> dict:
    """`new` (the wrapper's changed arguments) with the id-only rows' ControlNet signal as a COND
    chunk gets it; for ControlNets that read the labels (`_control_reads_labels`)."""
    c = args["c"]
    control = _spliced(c.get("control"), _control_as_cond(args, start, stop), args["input"].shape[0], start, stop,
                       append)
    return dict(new, c=dict(new["c"], control=control))


def _make_unet_wrapper(job: Job, st: ForgePass):
    """Forge's `model_function_wrapper`: on steps with a plan, the id-only rows join the call that
    carries the negative chunk; otherwise (and for every other call, e.g. SAG's or PAG's extra
    passes after the cfg function) the call is passed on untouched."""
    def fastface_unet_wrapper(apply_model, args):
        prior = st.prior_wrapper

        def run(call_args):
            if prior is not None:
                return prior(apply_model, call_args)
            return apply_model(call_args["input"], call_args["timestep"], **call_args["c"])

        plan = st.plan
        if plan is None or not job.active or job.current_pass is not st or UNCOND not in args["cond_or_uncond"]:
            return run(args)
        try:
            start, stop = _negative_rows(args)
            reads_labels = _control_reads_labels(args["c"])
            if plan == ID_IN_UNCOND:
                new = _relabelled(args)
                if reads_labels:
                    new = _with_cond_control(new, args, start, stop, append=False)
                out = run(new)
                st.id_x0 = True          # the uncond prediction of this step is ε_id
                return out
            new, rows = _with_id_rows(args, start, stop, own_control=reads_labels)
            if reads_labels:
                new = _with_cond_control(new, args, start, stop, append=True)
            out = run(new)
            st.id_x0 = out[rows:]
            return out[:rows]
        except Exception as exc:   # out of memory with the extra rows: the step again, Forge's way
            st.plan = None
            if plan == ID_IN_UNCOND and is_out_of_memory(exc) and job.out_of_memory is None and job.in_denoiser_call:
                raise   # Forge's own rows (relabelled): its own out-of-memory error, for the guard to pass on
            job.fail_in_call("Forge UNet wrapper", exc, IN_EXTRA_ROWS)
            return run(args)
    fastface_unet_wrapper._fastface = True
    return fastface_unet_wrapper


def _cn_weighting(unet) -> Optional[str]:
    """A ControlNet unit that weights cond and uncond rows differently ("My prompt / ControlNet is
    more important", backend/patcher/controlnet.py L87-138): its signal for the negative rows is
    computed before the wrapper runs, so id-only rows batched with them would get the uncond
    weighting. Such jobs keep the separate id-only call."""
    cnet, seen = getattr(unet, "controlnet_linked_list", None), 0
    while cnet is not None and seen < 64:
        if any(getattr(cnet, attr, None) is not None for attr in CN_WEIGHTINGS):
            return type(cnet).__name__
        cnet, seen = getattr(cnet, "previous_controlnet", None), seen + 1
    return None


def install_batching(job: Job, st: ForgePass, unet) -> None:
    """The id-only rows ride in Forge's own UNet call through `model_function_wrapper` (chained
    after another extension's wrapper, e.g. MultiDiffusion's)."""
    options = unet.model_options
    weighted = _cn_weighting(unet)
    if weighted is not None:
        job.note("a ControlNet unit weights cond and uncond differently: the id-only branch takes its own UNet call")
        return
    prior = options.get("model_function_wrapper")
    while prior is not None and ours(prior):
        prior = getattr(prior, "_fastface_prior", None)
    st.prior_wrapper = prior
    wrapper = _make_unet_wrapper(job, st)
    wrapper._fastface_prior = prior
    options["model_function_wrapper"] = wrapper   # UnetPatcher.set_model_unet_function_wrapper (base.py L146-147)
    st.batched = True


