"""Forge DCG: the conditioning stash, the pre-CFG plan of each model call, the cfg function that
returns x − `dcg_x0(...)`, and their install on the pass's UNet clone."""
from __future__ import annotations

from typing import Optional

import torch

from ...method.guidance import dcg_x0
from ...method.schedule import alpha_beta, branches_needed, rescale_phi
from ..common import CFG_PP_NOTE, IN_DCG, Job
from .batching import ID_APPENDED, ID_IN_UNCOND, id_plan, install_batching, ours
from .internals import calc_cond_batch
from .state import ForgePass

STASH_KEY = "fastface_uncond"          # model_options key: the step's compiled negative conditioning


def _stock_cfg(args) -> torch.Tensor:
    """What `sampling_function_inner` does without a cfg function, in its "x − denoised" form
    (the cond alone where FastFace's hook dropped the uncond rows of this call)."""
    if args["uncond"] is None:
        return args["cond"]
    return args["uncond"] + (args["cond"] - args["uncond"]) * args["cond_scale"]


def _make_stash(job: Job, st: ForgePass):
    def stash(model, x, timestep, uncond, cond, cond_scale, model_options, seed):
        if uncond is not None:
            model_options = {**model_options, STASH_KEY: uncond}
        return model, x, timestep, uncond, cond, cond_scale, model_options, seed
    stash._fastface = True
    return stash


def _uncond_droppable(job: Job, st: ForgePass, model_options, *, after_evaluation: bool) -> bool:
    """No uncond rows this step: DCG does not read them, and no one else might. Where the pre-CFG
    functions run after the evaluation (reForge, samplers.py L424-427) another one may read them."""
    need = branches_needed(st.step, st.total, job.args)
    if need.uncond or (need.id_only and not st.face):   # without a face, id-only = uncond
        return False
    if after_evaluation and any(not ours(fn) for fn in model_options.get("sampler_pre_cfg_function") or []):
        return False
    return st.prior_cfg is None and not model_options.get("sampler_post_cfg_function") and not st.renoise_uncond


def cfg_pp_function(model_options) -> Optional[object]:
    """The post-CFG function a CFG++ sampler installed for this model call, or None.

    Forge Neo's (and reForge's) k-diffusion `sample_*_cfg_pp` add a nested `post_cfg_function` to
    the call's model_options that keeps `uncond_denoised` and renoises with it on every step (Neo
    `k_diffusion/sampling.py` L667-673, L715-721). Recognised by the function it is nested in
    (`sample_euler_cfg_pp.<locals>.post_cfg_function`): the sampler never reaches the UNet patcher."""
    for fn in model_options.get("sampler_post_cfg_function") or []:
        outer = str(getattr(fn, "__qualname__", "")).split(".<locals>.")[0]
        if not ours(fn) and outer.endswith("_cfg_pp"):
            return fn
    return None


def unet_calls_per_evaluation(step: int, total: int, args, *, face: bool = True, batched: bool = True) -> int:
    """UNet calls Forge makes for one model evaluation of `step` with FastFace on (the numbers the
    README documents; a second-order sampler evaluates most steps twice). One when the id-only rows
    ride in Forge's own call (or are not needed); two when they need their own call: a ControlNet
    unit with cond/uncond weighting, or Forge's free-memory check splitting the batch (Forge's
    own choice, not counted here)."""
    need = branches_needed(step, total, args)
    return 2 if (args.enabled and args.dcg and face and need.id_only and not batched) else 1


def _plan(job: Job, st: ForgePass, cond, uncond_, model_options, *, after_evaluation: bool):
    """Before Forge evaluates a model call: how the id-only rows ride in it (`st.plan`), and the
    uncond entries it evaluates (None where DCG drops them)."""
    st.plan, st.id_x0, st.uncond_ran, st.planned = None, None, None, True
    if st.renoise_uncond or cfg_pp_function(model_options) is not None:
        # CFG++ keeps DCG's result as the denoised and renoises with the real uncond: the
        # uncond is read on every step, so `_uncond_droppable` keeps it (the post-CFG function)
        job.note(CFG_PP_NOTE)
    droppable = uncond_ is not None and _uncond_droppable(job, st, model_options, after_evaluation=after_evaluation)
    st.plan = id_plan(job, st, uncond_, droppable)
    if droppable and st.plan is None:
        uncond_ = None
    if cond is not None and len(cond) > 1:
        job.note("AND prompts: DCG uses Forge's weighted average of the sub-prompts as the full branch")
    st.uncond_ran = uncond_ is not None and st.plan != ID_IN_UNCOND
    return uncond_


def _make_pre_cfg(job: Job, st: ForgePass):
    """Forge 2 / Forge Classic: `sampler_pre_cfg_function`s get a 6-tuple *before* the evaluation
    (sampling_function.py L300-301). reForge calls them with an args dict *after* it (samplers.py
    L424-427): nothing to plan there, its `conds_out` is passed on (the plan is made by
    `_make_calc_cond_batch`)."""
    def pre_cfg(*args):
        if len(args) == 1 and isinstance(args[0], dict):  # ComfyUI-style hook (after evaluation)
            return args[0].get("conds_out")
        model, cond, uncond_, x, timestep, model_options = args
        if job.active and job.current_pass is st and not st.planned:
            try:
                uncond_ = _plan(job, st, cond, uncond_, model_options, after_evaluation=False)
            except Exception as exc:
                st.plan = None
                job.fail("Forge pre-CFG", exc)
        return model, cond, uncond_, x, timestep, model_options
    pre_cfg._fastface = True
    return pre_cfg


def _make_calc_cond_batch(job: Job, st: ForgePass, host_calc):
    """reForge's `sampler_calc_cond_batch_function` (samplers.py L419-422), called *instead of*
    `calc_cond_batch(model, [cond, uncond], x, σ, model_options)` before the evaluation: the plan
    is made here, then the host's own evaluation (or another extension's function) runs with the
    uncond entries DCG keeps; the `model_function_wrapper` carries the plan out inside it."""
    def fastface_calc_cond_batch(args):
        prior = st.prior_calc

        def run(call_args):
            if prior is not None:
                return prior(call_args)
            return host_calc(call_args["model"], call_args["conds"], call_args["input"], call_args["sigma"],
                             call_args["model_options"])

        conds = args.get("conds")
        if not (job.active and job.current_pass is st) or st.planned or not isinstance(conds, (list, tuple)) \
                or len(conds) != 2:
            return run(args)
        try:
            uncond_ = _plan(job, st, conds[0], conds[1], args["model_options"], after_evaluation=True)
        except Exception as exc:
            st.plan = None
            job.fail("Forge calc_cond_batch", exc)
            return run(args)
        if uncond_ is conds[1]:
            return run(args)
        out = list(run(dict(args, conds=[conds[0], uncond_])))
        out[1] = None     # not evaluated (calc_cond_batch fills an absent entry with zeros)
        return out
    fastface_calc_cond_batch._fastface = True
    return fastface_calc_cond_batch


def _dcg(job: Job, st: ForgePass, args, plan: Optional[str], id_x0, planned: bool, ran) -> torch.Tensor:
    x, sigma, model, options = args["input"], args["sigma"], args["model"], args["model_options"]
    step, total, fa = st.step, st.total, job.args
    need = branches_needed(step, total, fa)
    alpha, beta = alpha_beta(step, total, fa)
    phi = rescale_phi(step, total, fa)
    negative = options.get(STASH_KEY)
    uncond_ran = bool(ran if ran is not None else negative is not None) and args["uncond_denoised"] is not None
    full = args["cond_denoised"]
    uncond = args["uncond_denoised"] if uncond_ran else full
    if need.uncond and not uncond_ran:
        job.note("no negative prediction on some steps: DCG used α = 1 there")
        alpha = 1.0
    if alpha != beta or phi > 0:   # the id-only branch has a weight or feeds the rescale
        if plan == ID_IN_UNCOND and id_x0 is True:
            id_only = args["uncond_denoised"]     # the relabelled negative rows: ε(∅, c_id)
        elif plan == ID_APPENDED and isinstance(id_x0, torch.Tensor):
            id_only = id_x0
        elif not st.face and uncond_ran:
            id_only = uncond      # no FaceID unit: negative text alone is the id-only branch
        elif negative is not None and st.calc is not None:
            _note_separate_call(job, st, plan, planned)
            # the negative conditioning in the *cond* slot: labelled COND, so the IP-Adapter
            # gives these rows the face embedding (the authors' ε(∅, c_id))
            id_only, _ = st.calc(model, negative, None, x, sigma, options)
        else:
            raise RuntimeError("the negative conditioning of this step is not available")
    else:
        id_only = full
    denoised = dcg_x0(x, sigma, uncond, id_only, full, alpha, beta, phi)
    if st.prior_cfg is not None:
        scale = float(args["cond_scale"])   # a Python number (CFGDenoiser's cond_scale)
        if uncond_ran and scale != 0.0:
            # the other function sees cond' with u + s·(cond' − u) = DCG: it works on top of DCG
            cond_eff = uncond + (denoised - uncond) / scale
            chained = dict(args, cond_denoised=cond_eff, cond=x - cond_eff)
            return st.prior_cfg(chained)
        job.note("the other cfg function was skipped on steps without a negative prediction")
    return x - denoised


def _note_separate_call(job: Job, st: ForgePass, plan: Optional[str], planned: bool) -> None:
    """Why the id-only branch takes a UNet call of its own on this step (never silently). Jobs set
    up without batching said so when it was installed (`install_dcg`, `install_batching`)."""
    if plan is not None:
        job.note("the id-only rows could not join Forge's batch (another UNet wrapper?): one more UNet call per step")
    elif st.batched and not planned:
        job.note("this Forge called none of FastFace's hooks before its UNet call: one more UNet call per step")
    elif st.batched:
        job.note("the negative prompt could not join Forge's batch (area, mask, strength or several entries): "
                 "one more UNet call per step")


def _make_cfg(job: Job, st: ForgePass):
    def fastface_cfg(args):
        prior = st.prior_cfg
        plan, id_x0, planned, ran = st.plan, st.id_x0, st.planned, st.uncond_ran
        # later calls of this step (post-cfg passes) are not ours; the next model call plans anew
        st.plan, st.id_x0, st.planned, st.uncond_ran = None, None, False, None
        if job.active and job.current_pass is st:
            try:
                return _dcg(job, st, args, plan, id_x0, planned, ran)
            except Exception as exc:
                job.fail_in_call("Forge DCG", exc, IN_DCG)
        return prior(args) if prior is not None else _stock_cfg(args)
    fastface_cfg._fastface = True
    fastface_cfg._fastface_prior = st.prior_cfg
    return fastface_cfg


def _without_ours(options, key: str) -> None:
    if isinstance(options.get(key), list):
        options[key] = [fn for fn in options[key] if not ours(fn)]


def install_dcg(job: Job, p, st: ForgePass, unet) -> bool:
    options = unet.model_options
    for key in ("conditioning_modifiers", "sampler_pre_cfg_function"):
        _without_ours(options, key)   # a clone of FastFace's own earlier clone (hires restart)
    prior = options.get("sampler_cfg_function")
    while prior is not None and ours(prior):
        prior = getattr(prior, "_fastface_prior", None)
    if prior is not None:
        owner = getattr(prior, "__qualname__", type(prior).__name__)
        job.note(f"another extension's cfg function ({owner}) is chained after DCG")
    st.prior_cfg = prior
    if not hasattr(unet, "add_conditioning_modifier") or not hasattr(unet, "set_model_sampler_cfg_function"):
        job.note("this Forge has no conditioning modifiers or cfg function: DCG is off")
        return False
    unet.add_conditioning_modifier(_make_stash(job, st))
    # The hook that runs before the evaluation: Forge 2 / Forge Classic's 6-tuple pre-CFG function,
    # reForge's calc-cond-batch function (its pre-CFG functions run after it). Both are installed
    # where offered; whichever is called first for a model call plans it.
    add_pre = getattr(unet, "add_sampler_pre_cfg_function", None) or getattr(unet, "set_model_sampler_pre_cfg_function", None)
    if add_pre is not None:
        add_pre(_make_pre_cfg(job, st))
    set_calc = getattr(unet, "set_model_sampler_calc_cond_batch_function", None)
    host_calc = calc_cond_batch() if callable(set_calc) else None
    if host_calc is not None:
        prior_calc = options.get("sampler_calc_cond_batch_function")
        while prior_calc is not None and ours(prior_calc):
            prior_calc = getattr(prior_calc, "_fastface_prior", None)
        st.prior_calc = prior_calc
        hook = _make_calc_cond_batch(job, st, host_calc)
        hook._fastface_prior = prior_calc
        set_calc(hook)
    if st.face:
        if add_pre is not None or host_calc is not None:
            install_batching(job, st, unet)
        else:
            job.note("this Forge has no hook before its UNet call: the id-only branch takes its own UNet call")
    unet.set_model_sampler_cfg_function(_make_cfg(job, st), disable_cfg1_optimization=True)
    unet.model_options["disable_cfg1_optimization"] = True
    return True

