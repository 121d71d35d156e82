"""UNet benchmark (a script, not a test): what FastFace's face branch costs in one whole UNet call
and in a 4-step image, next to plain IP-Adapter FaceID, on an SDXL-shaped UNet with random weights.

    python bench/bench_unet.py [--repeats N] [--graphs] [--no-fused] [--device auto|cuda|cpu]

Needs diffusers (the `bench` extra: `pip install -e ".[bench]"`); nothing is downloaded. The UNet
is diffusers' `UNet2DConditionModel` built from the SDXL-base config with random weights, and every
attn2 layer carries an IP-Adapter-FaceID face branch (T face tokens, own to_k_ip / to_v_ip):

    attn2(x) = to_out( SDPA(q, k_text, v_text) + λ · face(q, k_ip, v_ip) )

where `face` is the fused SDPA a host runs without FastFace, or `fastface.method.attention.ip_attention`
with the preset's transform in the layers its AM touches (down / mid / up), fused SDPA elsewhere.
On CUDA: fp16, full SDXL-base at 1024² (latent 128²). On CPU: a small config with SDXL's 70 attn2
layers (so the per-layer host overhead weighs as in SDXL), fp32, latent 16², 1 thread by default.

Timed, per variant, one UNet call: median (and min) over rounds in which every variant runs once, in turn
(CUDA: events around the call, then a synchronize; the code under test never syncs. CPU with one
thread: the process's CPU time, which a busy shared machine inflates less than the wall clock).
The per-image UNet time of each preset is COMPOSED from those medians: the sum, over the steps of
a 4-step pass, of the call time for that step's rows per image (`rows_per_image`). `--graphs`
(CUDA) also captures every variant's UNet call in a CUDA graph and times its replay (GPU work only).
Progress goes to stderr, the Markdown tables to stdout.
"""
from __future__ import annotations

import argparse
import inspect
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fastface.method import attention  # noqa: E402
from fastface.method.attention import ip_attention  # noqa: E402
from fastface.method.transforms import transform_for  # noqa: E402
from fastface.presets import PRESETS  # noqa: E402
from fastface.method.schedule import rows_per_image  # noqa: E402

PARTS = ("down", "mid", "up")
REFERENCE_STEP = 1  # the step whose transform every call variant uses (the cost does not depend on (d, s))

# SDXL-base's UNet (stabilityai/stable-diffusion-xl-base-1.0, unet/config.json); 2.57 G params,
# 70 attn2 layers. `attention_head_dim` is diffusers' historical name for the number of heads.
SDXL_BASE = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048, use_linear_projection=True, norm_num_groups=32,
    addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,  # 1280 pooled text + 6 time ids × 256
)
TEXT_EMBED_SDXL = 1280

# CPU stand-in: SDXL's block layout and transformer depths (the same 70 attn2 layers, so per-layer
# Python overhead counts as often as in SDXL) with narrow channels (head dim 32).
SMALL = dict(SDXL_BASE, sample_size=32, block_out_channels=(32, 64, 128), attention_head_dim=(1, 2, 4),
             cross_attention_dim=128, addition_time_embed_dim=16,
             projection_class_embeddings_input_dim=64 + 6 * 16, norm_num_groups=32)
TEXT_EMBED_SMALL = 64


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- face branch

@dataclass
class FaceBranchState:
    """What every attn2 processor reads on a call: set once per variant, before its UNet call."""

    face: Optional[torch.Tensor] = None                      # (rows, T, cross_dim) face tokens
    transforms: dict = field(default_factory=dict)           # part -> transform or None
    ip_kwargs: dict = field(default_factory=dict)            # {"kernels": KernelSwitch} or {}
    scale: float = 1.0                                       # λ, the IP-Adapter weight


class FaceIDAttnProcessor(nn.Module):
    """attn2 with IP-Adapter-FaceID's decoupled cross-attention. Text branch: fused SDPA. Face
    branch: fused SDPA when the part has no transform (what a host runs without FastFace), else
    FastFace's explicit `ip_attention` with the transform."""

    def __init__(self, hidden: int, cross_dim: int, part: str, state: FaceBranchState):
        super().__init__()
        self.to_k_ip = nn.Linear(cross_dim, hidden, bias=False)
        self.to_v_ip = nn.Linear(cross_dim, hidden, bias=False)
        self.part = part
        self.state = state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **_):
        rows, length, _ = hidden_states.shape                     # (B, L, C)
        heads = attn.heads
        q = attn.to_q(hidden_states)
        d = q.shape[-1] // heads

        def split(x):                                              # (B, n, heads·d) -> (B, heads, n, d)
            return x.view(rows, -1, heads, d).transpose(1, 2)

        q = split(q)
        out = F.scaled_dot_product_attention(q, split(attn.to_k(encoder_hidden_states)),
                                             split(attn.to_v(encoder_hidden_states)))
        face = self.state.face                                     # (B, T, cross_dim)
        k_ip, v_ip = split(self.to_k_ip(face)), split(self.to_v_ip(face))   # (B, heads, T, d)
        transform = self.state.transforms.get(self.part)
        if transform is None:
            ip = F.scaled_dot_product_attention(q, k_ip, v_ip)
        else:
            ip = ip_attention(q, k_ip, v_ip, transform, **self.state.ip_kwargs)
        out = out + self.state.scale * ip
        out = out.transpose(1, 2).reshape(rows, length, heads * d)
        return attn.to_out[1](attn.to_out[0](out))


def install_face_branch(unet, state: FaceBranchState) -> int:
    """A FaceIDAttnProcessor in every attn2 layer; returns how many."""
    from diffusers.models.attention_processor import Attention

    count = 0
    for name, module in unet.named_modules():
        if not (isinstance(module, Attention) and name.endswith("attn2")):
            continue
        # these would need handling in the processor; SDXL has neither
        assert not module.residual_connection and module.rescale_output_factor == 1.0, name
        part = "down" if name.startswith("down_blocks") else "mid" if name.startswith("mid_block") else "up"
        module.set_processor(FaceIDAttnProcessor(module.to_q.out_features, module.to_k.in_features, part, state))
        count += 1
    return count


# ----------------------------------------------------------------------------- variants

def kernels_supported() -> bool:
    """True when this fastface has the fused-kernel switch (`ip_attention(..., kernels=)`)."""
    return hasattr(attention, "KernelSwitch") and "kernels" in inspect.signature(ip_attention).parameters


@dataclass
class Variant:
    label: str
    rows: int
    transforms: dict          # part -> transform or None
    kernels: object = None    # KernelSwitch or None
    key: tuple = ()
    presets: list = field(default_factory=list)   # presets whose passes make this call

    @property
    def am(self) -> bool:
        return any(t is not None for t in self.transforms.values())

    @property
    def name(self) -> str:
        if not self.am:
            return self.label
        return f"{self.label} [{', '.join(self.presets)}]"


def preset_transforms(args, steps: int) -> dict:
    return {part: transform_for(args, part, min(REFERENCE_STEP, steps - 1), steps) for part in PARTS}


def am_label(transforms: dict) -> str:
    kinds = sorted({type(t).__name__ for t in transforms.values() if t is not None})
    parts = "+".join(p for p in PARTS if transforms[p] is not None)
    names = {"ScalePower": "scale-power", "Softmask": "softmask+AdaIN"}
    return " & ".join(names.get(k, k) for k in kinds) + f" ({parts})"


def build_variants(steps: int, use_kernels: bool):
    """Every distinct (rows, transforms, kernels) call the presets' passes need, plus the two
    reference calls; and, per preset, the variant key of each step's call (torch path / kernels)."""
    variants: dict = {}

    def add(rows, transforms, kernels: bool, preset: Optional[str] = None):
        key = (rows, tuple(transforms[p] for p in PARTS), kernels)
        if key not in variants:
            if all(t is None for t in transforms.values()):
                label = f"{rows} rows, fused face branch" + (" (plain FaceID)" if rows == 2 else "")
                switch = None
            else:
                label = f"{rows} rows + ip_attention, {am_label(transforms)}"
                switch = attention.KernelSwitch() if kernels else None
                if kernels:
                    label += ", fused kernels"
            variants[key] = Variant(label, rows, dict(transforms), switch, key)
        if preset is not None and preset not in variants[key].presets:
            variants[key].presets.append(preset)
        return key

    none = {p: None for p in PARTS}
    plain = add(2, none, False)
    add(3, none, False)
    per_preset = {}
    for name, args in PRESETS.items():
        transforms = preset_transforms(args, steps)
        am = any(t is not None for t in transforms.values())
        rows = rows_per_image(steps, args)
        keys = {"torch": [add(r, transforms, False, name) for r in rows]}
        if am and use_kernels:
            keys["kernels"] = [add(r, transforms, True, name) for r in rows]
        per_preset[name] = (rows, keys)
    # fused calls by rows (plain FaceID first), then AM calls: torch path, then kernels; most rows first
    ordered = sorted(variants.values(), key=lambda v: (v.am, v.kernels is not None,
                                                       -v.rows if v.am else v.rows, v.label))
    return ordered, plain, per_preset


# ----------------------------------------------------------------------------- model and inputs

def build_unet(device: torch.device, dtype: torch.dtype, config: dict):
    from diffusers import UNet2DConditionModel
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # .to(fp16) warns about from_pretrained's torch_dtype
    t0 = time.perf_counter()
    # built straight on the device: 2.6 G params initialised on the CPU would take minutes
    with torch.device(device):
        unet = UNet2DConditionModel(**config)
        state = FaceBranchState()
        n_attn2 = install_face_branch(unet, state)
    unet = unet.to(dtype).eval().requires_grad_(False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    params = sum(p.numel() for p in unet.parameters())
    build_s = time.perf_counter() - t0
    log(f"built UNet: {params / 1e6:.1f} M params (incl. face k/v), {n_attn2} attn2 layers, {build_s:.1f} s")
    return unet, state, params, n_attn2, build_s


def make_inputs(rows: int, latent: int, config: dict, text_dim: int, face_tokens: int,
                device, dtype, gen: torch.Generator) -> dict:
    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    return dict(
        sample=randn(rows, 4, latent, latent),
        timestep=torch.full((rows,), 500.0, device=device),
        encoder_hidden_states=randn(rows, 77, config["cross_attention_dim"]),
        added_cond_kwargs={"text_embeds": randn(rows, text_dim),
                           "time_ids": torch.tensor([[8.0 * latent] * 2 + [0.0, 0.0] + [8.0 * latent] * 2] * rows,
                                                    device=device, dtype=dtype)},
        face=randn(rows, face_tokens, config["cross_attention_dim"]) * 0.5,
    )


def call_fn(unet, state: FaceBranchState, variant: Variant, inputs: dict, scale: float) -> Callable:
    def run():
        state.face = inputs["face"]
        state.transforms = variant.transforms
        state.ip_kwargs = {"kernels": variant.kernels} if variant.kernels is not None else {}
        state.scale = scale
        return unet(inputs["sample"], inputs["timestep"], encoder_hidden_states=inputs["encoder_hidden_states"],
                    added_cond_kwargs=inputs["added_cond_kwargs"], return_dict=False)[0]
    return run


# ----------------------------------------------------------------------------- timing

def timer(device: torch.device, cpu_clock: Callable[[], float] = time.perf_counter) -> Callable[[Callable], float]:
    """ms of one call of fn. CUDA: events around it, then a synchronize (the bench's own sync).
    CPU: `cpu_clock` (wall clock, or the process's CPU time when it runs one thread)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def cuda_ms(fn):
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        return cuda_ms

    def cpu_ms(fn):
        t0 = cpu_clock()
        fn()
        return (cpu_clock() - t0) * 1e3
    return cpu_ms


def interleaved_times(fns: dict, repeats: int, measure: Callable, what: str) -> dict:
    """ms of each function in every round; a round runs each once, in turn, so drift hits all alike."""
    times = {name: [] for name in fns}
    t0 = time.perf_counter()
    for i in range(repeats):
        for name, fn in fns.items():
            times[name].append(measure(fn))
        log(f"  {what}: round {i + 1}/{repeats} ({time.perf_counter() - t0:.1f} s)")
    return times


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:160]


def capture_graphs(fns: dict) -> tuple[dict, dict]:
    """A CUDA graph per variant (warm-up on a side stream, then capture), or the error text."""
    graphs, errors = {}, {}
    for name, fn in fns.items():
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                fn()
            torch.cuda.current_stream().wait_stream(side)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                fn()
            torch.cuda.synchronize()
            graphs[name] = graph
            log(f"  captured: {name}")
        except Exception as exc:  # noqa: BLE001 - the error is the result
            # a failed capture_end() in the graph context's exit hides the error that broke the capture
            first = exc.__context__ or exc
            errors[name] = f"{type(first).__name__}: {first_line(first)}".replace("|", "/")
            if first is not exc:
                errors[name] += f" (then {type(exc).__name__}: {first_line(exc)})".replace("|", "/")
            log(f"  NOT capturable: {name}: {errors[name]}")
            try:
                torch.cuda.synchronize()
            except Exception as again:  # noqa: BLE001
                log(f"  CUDA left unusable after a failed capture: {again}")
                raise
    return graphs, errors


# ----------------------------------------------------------------------------- report

def fmt(ms: Optional[float]) -> str:
    return "—" if ms is None else (f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}")


def ratio(ms: Optional[float], ref: Optional[float]) -> str:
    return "—" if ms is None or not ref else f"{ms / ref:.2f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default: CUDA 15, CPU 21)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls per variant (CUDA 3, CPU 1)")
    parser.add_argument("--latent", type=int, default=None, help="latent side (default: CUDA 128 = 1024², CPU 16)")
    parser.add_argument("--config", choices=("auto", "sdxl", "small"), default="auto",
                        help="UNet config (default: sdxl on CUDA, small on CPU)")
    parser.add_argument("--steps", type=int, default=4, help="steps per image for the per-image totals")
    parser.add_argument("--face-tokens", type=int, default=4, help="T: 4 for FaceID, 16 for Portrait")
    parser.add_argument("--scale", type=float, default=1.0, help="λ, the IP-Adapter weight")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")),
                        help="CPU threads (default: OMP_NUM_THREADS or 1)")
    parser.add_argument("--no-fused", action="store_true",
                        help="never pass kernels= to ip_attention (torch path only)")
    parser.add_argument("--graphs", action="store_true", help="CUDA: also time CUDA-graph replays")
    parser.add_argument("--wall", action="store_true",
                        help="CPU: time by wall clock even with 1 thread (default there: the process's CPU "
                             "time, which other processes on a shared machine do not inflate)")
    ns = parser.parse_args()

    cuda = torch.cuda.is_available() if ns.device == "auto" else ns.device == "cuda"
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.float16 if cuda else torch.float32
    sdxl = ns.config == "sdxl" or (ns.config == "auto" and cuda)
    config, text_dim = (SDXL_BASE, TEXT_EMBED_SDXL) if sdxl else (SMALL, TEXT_EMBED_SMALL)
    latent = ns.latent or (128 if sdxl else 16)
    repeats = ns.repeats or (15 if cuda else 21)
    warmup = ns.warmup if ns.warmup is not None else (3 if cuda else 1)
    torch.set_num_threads(ns.threads)
    has_switch = kernels_supported()
    use_kernels = cuda and has_switch and not ns.no_fused
    graphs_on = ns.graphs and cuda
    cpu_time = not cuda and ns.threads == 1 and not ns.wall
    measure = timer(device, time.process_time if cpu_time else time.perf_counter)
    t_start = time.perf_counter()

    import diffusers
    unet, state, params, n_attn2, build_s = build_unet(device, dtype, config)
    variants, plain_key, per_preset = build_variants(ns.steps, use_kernels)
    gen = torch.Generator().manual_seed(0)
    inputs = {rows: make_inputs(rows, latent, config, text_dim, ns.face_tokens, device, dtype, gen)
              for rows in sorted({v.rows for v in variants})}
    fns = {v.key: call_fn(unet, state, v, inputs[v.rows], ns.scale) for v in variants}

    # warm-up (Triton compiles here), then the outputs' sanity and the kernels' agreement, untimed
    finite, max_diff = {}, {}
    outputs = {}
    with torch.inference_mode():
        for v in variants:
            log(f"warm-up: {v.name}")
            for _ in range(max(1, warmup)):  # ≥ 1: the output is checked below
                out = fns[v.key]()
            outputs[v.key] = out.float()
            finite[v.key] = bool(torch.isfinite(out).all())
        for v in variants:
            if v.kernels is not None:
                torch_key = (v.rows, v.key[1], False)
                ref = outputs[torch_key]
                max_diff[v.key] = (float((outputs[v.key] - ref).abs().max()), float(ref.abs().max()))
        del outputs, out

        log(f"timing {len(variants)} variants, {repeats} interleaved rounds")
        eager_times = interleaved_times({v.key: fns[v.key] for v in variants}, repeats, measure, "eager")
        eager = {k: statistics.median(ts) for k, ts in eager_times.items()}
        eager_min = {k: min(ts) for k, ts in eager_times.items()}
        graph_ms, graph_err = {}, {}
        if graphs_on:
            # capture the likeliest to fail last, so a broken context would cost the fewest results
            order = sorted(variants, key=lambda v: (v.am and v.kernels is None, v.rows))
            log("capturing CUDA graphs")
            graphs, graph_err = capture_graphs({v.key: fns[v.key] for v in order})
            for graph in graphs.values():  # one untimed replay each
                graph.replay()
            torch.cuda.synchronize()
            graph_times = interleaved_times({k: g.replay for k, g in graphs.items()}, repeats, measure, "graphs")
            graph_ms = {k: statistics.median(ts) for k, ts in graph_times.items()}

    # ---- report
    dev_name = torch.cuda.get_device_name(0) if cuda else f"CPU, {torch.get_num_threads()} thread(s)"
    print(f"\n## UNet benchmark: {'SDXL-base' if sdxl else 'small SDXL-layout'} UNet, random weights, "
          f"IP-Adapter-FaceID face branch (T={ns.face_tokens}, λ={ns.scale}) in all {n_attn2} attn2 layers\n")
    print(f"- device: {dev_name}; torch {torch.__version__}, diffusers {diffusers.__version__}; {dtype}; "
          f"{params / 1e6:.0f} M params (built in {build_s:.0f} s); latent {latent}² ({latent * 8}² image)")
    print(f"- fused face-branch kernels: "
          + ("used (`kernels=KernelSwitch()`)" if use_kernels else
             "off (--no-fused)" if ns.no_fused else
             "not in this fastface (no attention.KernelSwitch)" if not has_switch else "CUDA only"))
    print(f"- one UNet call per variant, median of {repeats} interleaved rounds after {warmup} warm-up call(s)"
          + ("; CUDA events around the call" if cuda else
             "; process CPU time (1 thread)" if cpu_time else "; wall clock"))
    print(f"- AM transforms: `transform_for(preset, part, step={min(REFERENCE_STEP, ns.steps - 1)}, "
          f"total={ns.steps})` per part, groups=None "
          f"(one image per batch, so every row pools together, as a host's period of 1 does)\n")

    plain = eager[plain_key]
    plain_graph = graph_ms.get(plain_key)
    head = "| one UNet call | eager ms | × plain FaceID | eager min ms | × plain (min) |"
    rule = "|---|---|---|---|---|"
    if graphs_on:
        head += " CUDA graph | graph ms | × plain (graph) |"
        rule += "---|---|---|"
    print(head)
    print(rule)
    for v in variants:
        label = v.name
        if v.kernels is not None:
            if not v.kernels.enabled:
                label += f" — KERNELS TURNED OFF: {v.kernels.failed}"
            diff, ref = max_diff[v.key]
            label += f" (output vs torch path: max abs diff {diff:.1e}, of max abs {ref:.1e})"
        if not finite[v.key]:
            label += " (output NOT finite)"
        cells = (f"| {label} | {fmt(eager[v.key])} | {ratio(eager[v.key], plain)} | "
                 f"{fmt(eager_min[v.key])} | {ratio(eager_min[v.key], eager_min[plain_key])} |")
        if graphs_on:
            if v.key in graph_err:
                cells += f" no: {graph_err[v.key]} | — | — |"
            else:
                cells += f" yes | {fmt(graph_ms.get(v.key))} | {ratio(graph_ms.get(v.key), plain_graph)} |"
        print(cells)

    print(f"\n### Per-image UNet time, {ns.steps} steps (composed: the sum of the measured call times above "
          f"for each step's rows per image, `rows_per_image`)\n")
    paths = ["torch"] + (["kernels"] if use_kernels else [])
    head = "| preset | rows per step | " + " | ".join(
        f"{p} path ms | × plain" + (f" | {p} graphs ms | × plain" if graphs_on else "") for p in paths) + " |"
    print(head)
    print("|---|---|" + "---|---|" * (len(paths) * (2 if graphs_on else 1)))
    plain_total = plain * ns.steps
    plain_graph_total = plain_graph * ns.steps if plain_graph else None
    for name, (rows, keys) in per_preset.items():
        cells = []
        for p in paths:
            ks = keys.get(p, keys["torch"])  # presets without AM take the same calls on both paths
            total = sum(eager[k] for k in ks)
            cells.append(f"{fmt(total)} | {ratio(total, plain_total)}")
            if graphs_on:
                g_total = None if any(k not in graph_ms for k in ks) else sum(graph_ms[k] for k in ks)
                cells.append(f"{fmt(g_total)} | {ratio(g_total, plain_graph_total)}")
        print(f"| {name} | {'/'.join(map(str, rows))} | " + " | ".join(cells) + " |")
    print(f"\n× plain = / ({ns.steps} × the plain FaceID 2-row call). A preset whose calls include a "
          "non-capturable one has no graph total. Total run time "
          f"{time.perf_counter() - t_start:.0f} s.")
    for v in variants:
        if v.kernels is not None and not v.kernels.enabled:
            print(f"\nNOTE: the fused kernels turned themselves off in '{v.name}': {v.kernels.failed}")


if __name__ == "__main__":
    main()
