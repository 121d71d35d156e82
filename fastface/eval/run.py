"""The run: the jobs still missing, one worker thread per server (a server that stops answering
is dropped and its job goes to the others), then summary.md/.json and the pictures; and `main`,
the command line."""
from __future__ import annotations

import argparse
import io
import json
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from .client import RequestFailed, Unreachable, build_payload, check_server, generate, readout_from_infotext
from .config import Config, EvalError, ServerError, load_config
from .grid import Job, inside, make_jobs, read_identities, read_prompts
from .metrics import face_id, load_aesthetic, load_clip, load_face_model, notes_from_config
from .pictures import bar_chart, contact_sheet, pareto_chart
from .results import ResultsFile, read_rows, row_key
from .stats import summarize, summary_markdown


class NotConfirmed(EvalError):
    code = 5


@dataclass
class RunState:
    done: int = 0
    failed: list = field(default_factory=list)
    dropped: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _progress(total: int, initial: int):
    try:
        from tqdm import tqdm
        return tqdm(total=total, initial=initial, unit="img", desc="fastface-eval", dynamic_ncols=True)
    except ImportError:
        class Plain:
            def __init__(self):
                self.n = initial

            def update(self, k=1):
                self.n += k
                print(f"fastface-eval: {self.n}/{total}", flush=True)

            def set_postfix_str(self, *_a, **_k):
                pass

            def close(self):
                pass
        return Plain()


def plan(cfg: Config) -> tuple[dict, list, list[Job], str]:
    """(identities, prompts, every job of the grid, the line that sizes it); reads, writes nothing."""
    identities = read_identities(cfg.identities)
    prompts = read_prompts(cfg.prompts, cfg.lowercase_prompts)
    jobs = make_jobs(identities, prompts, cfg.presets, cfg.seeds)
    line = (f"fastface-eval: {len(jobs)} images ({len(identities)} identities × {len(prompts)} prompts × "
            f"{len(cfg.presets)} {'presets' if all(v.label == v.fields.get('preset') for v in cfg.variants) else 'variants'}"
            f" × {len(cfg.seeds)} seeds)")
    return identities, prompts, jobs, line


def dry_run(cfg: Config, out=print) -> int:
    """`--dry-run`: the variants (their infotext values) and the job count; no server, no file."""
    _, _, jobs, line = plan(cfg)
    out(line)
    for variant in cfg.variants:
        out(f"variant: {variant.setting}")
    out(f"jobs: {len(jobs)}")
    return len(jobs)


def run(cfg: Config, out=print, confirm: Optional[Callable[[int], bool]] = None) -> dict:
    """Generate what is missing, then write the summary and the pictures. Returns the summary.
    `confirm(n)` (the command line's prompt) may stop the run before the n missing images are made."""
    identities, prompts, jobs, line = plan(cfg)
    os.makedirs(cfg.output, exist_ok=True)
    results_path = inside(cfg.output, "results.csv")
    earlier = read_rows(results_path)
    done = {}
    for row in earlier:
        try:
            if os.path.isfile(inside(cfg.output, row["file"])):
                done[row_key(row)] = row
        except (KeyError, ValueError, EvalError):
            continue
    todo = [j for j in jobs if j.key not in done]
    out(f"{line}; {len(jobs) - len(todo)} already on disk")
    if todo and confirm is not None and not confirm(len(todo)):
        raise NotConfirmed(f"nothing generated ({len(todo)} images not confirmed; --yes skips the question)")

    face_model = None
    references: dict = {}
    if cfg.face_models and todo:
        face_model, references = load_face_model(cfg, identities)
    if todo:
        clip, clip_note = load_clip(cfg)
        aesthetic, ae_note = load_aesthetic(cfg, clip)
    else:  # nothing to generate: the CSV holds whatever CLIP-T and AE earlier runs computed
        clip = aesthetic = None
        clip_note, ae_note = notes_from_config(cfg)

    if todo:
        servers = []
        for server in cfg.servers:
            problem = check_server(server, cfg)
            if problem:
                out("fastface-eval: " + problem)
            else:
                servers.append(server)
        if not servers:
            raise ServerError("no usable server (" + ", ".join(cfg.servers) + "); nothing was generated")
        failed = _generate_all(cfg, todo, servers, identities, results_path, face_model, references, (clip, aesthetic), out,
                               initial=len(jobs) - len(todo), total=len(jobs))
    else:
        failed = []

    rows = [r for r in read_rows(results_path) if row_key(r) in {j.key for j in jobs}]
    rows = list({row_key(r): r for r in rows}.values())  # a resumed run may have re-added a row
    summary = summarize(rows, cfg.presets, cfg.bootstrap, clip_note, ae_note,
                        settings={v.label: v.setting for v in cfg.variants})
    summary["failed"] = failed
    md = summary_markdown(summary, cfg)
    with open(inside(cfg.output, "summary.md"), "w", encoding="utf-8") as fh:
        fh.write(md)
    with open(inside(cfg.output, "summary.json"), "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=2)
    bar_chart(summary, inside(cfg.output, "chart.png"))
    if pareto_chart(summary, inside(cfg.output, "pareto.png")):   # only where CLIP-T or AE was computed
        for category in summary["by_category"]:
            pareto_chart(summary, inside(cfg.output, f"pareto_{category}.png"), category)
    contact_sheet(rows, identities, cfg.presets, os.path.realpath(cfg.output), inside(cfg.output, "contact_sheet.png"),
                  prompt_index=cfg.sheet_prompt, seed=cfg.sheet_seed)
    out(md)
    return summary


def _generate_all(cfg, todo, servers, identities, results_path, face_model, references, scorers, out, initial, total):
    clip, aesthetic = scorers
    pending: "queue.Queue[tuple[Job, int]]" = queue.Queue()
    for job in todo:
        pending.put((job, 0))
    state = RunState()
    results = ResultsFile(results_path)
    bar = _progress(total, initial)
    alive = set(servers)
    stop = threading.Event()

    def finish() -> None:
        with state.lock:
            state.done += 1
            bar.update(1)

    def worker(server: str) -> None:
        while not stop.is_set():
            try:
                job, tries = pending.get(timeout=0.2)
            except queue.Empty:
                with state.lock:
                    if state.done + len(state.failed) >= len(todo):
                        return
                continue
            try:
                started = time.monotonic()
                png, infotext = generate(server, build_payload(cfg, job, identities[job.identity], server), cfg.timeout)
                seconds = time.monotonic() - started
                target = inside(cfg.output, job.relpath())
                os.makedirs(os.path.dirname(target), exist_ok=True)
                tmp = target + ".part"
                with open(tmp, "wb") as fh:
                    fh.write(png)
                os.replace(tmp, target)  # an interrupted write never leaves a half image under the real name
                score, found = readout_from_infotext(infotext)
                clip_t = ae = None
                if face_model is not None or clip is not None:
                    from PIL import Image
                    with Image.open(io.BytesIO(png)) as im:
                        image = im.convert("RGB")
                    if face_model is not None:
                        score, found = face_id(face_model, references.get(job.identity), image)
                    if clip is not None:   # one CLIP image pass serves CLIP-T and AE
                        embedding = clip.image_embedding(image)
                        clip_t = clip.similarity(embedding, job.prompt.text)
                        if aesthetic is not None:
                            ae = aesthetic.from_embedding(embedding)
                results.add({"identity": job.identity, "prompt_index": job.prompt.index, "prompt": job.prompt.text,
                             "category": job.prompt.category, "preset": job.preset, "seed": job.seed,
                             "id": "" if score is None else f"{score:.4f}",
                             "face_found": "" if found is None else ("true" if found else "false"),
                             "seconds": f"{seconds:.2f}", "server": server, "file": job.relpath(),
                             "clip_t": "" if clip_t is None else f"{clip_t:.4f}",
                             "ae": "" if ae is None else f"{ae:.4f}"})
                finish()
            except Unreachable as exc:
                pending.put((job, tries))  # not the job's fault: another server takes it
                with state.lock:
                    alive.discard(server)
                    state.dropped.append(server)
                    bar_msg = f"server {server} dropped ({exc}); {len(alive)} left"
                out("\nfastface-eval: " + bar_msg)
                if not alive:
                    stop.set()
                return
            except RequestFailed as exc:
                if tries + 1 < cfg.attempts:
                    pending.put((job, tries + 1))
                else:
                    with state.lock:
                        state.failed.append(f"{job.label()}: {exc}")
                    out(f"\nfastface-eval: {job.label()} failed: {exc}")
            except EvalError as exc:
                with state.lock:
                    state.failed.append(f"{job.label()}: {exc}")
            except Exception as exc:  # keep going; report the item
                with state.lock:
                    state.failed.append(f"{job.label()}: {type(exc).__name__}: {exc}")
                out(f"\nfastface-eval: {job.label()} failed: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=worker, args=(s,), daemon=True, name=f"eval {s}") for s in servers]
    try:
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(timeout=0.5)
    except KeyboardInterrupt:
        stop.set()
        raise
    finally:
        bar.close()
        results.close()
    if not alive and state.done + len(state.failed) < len(todo):
        raise ServerError(f"every server stopped answering ({', '.join(state.dropped)}); "
                          f"{initial + state.done} of {total} images are on disk; run the same command again to resume")
    if state.failed:
        out(f"fastface-eval: {len(state.failed)} image(s) failed (they are left out; rerun to retry them):")
        for line in state.failed[:20]:
            out("  " + line)
    return list(state.failed)


# -- command line --------------------------------------------------------------------------------------------
def _ask(missing: int) -> bool:
    """The confirm before generating; only where someone can answer (a script's stdin is no terminal:
    it goes on, as with --yes)."""
    if not sys.stdin or not sys.stdin.isatty():
        return True
    try:
        answer = input(f"fastface-eval: generate {missing} images? [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fastface-eval",
        description="Measure identity likeness (the FastFace paper's ID metric) of FastFace presets on your own "
                    "models through a running WebUI's API. Resumes an interrupted run from its output folder.")
    parser.add_argument("--config", required=True, help="JSON or TOML config (see the README's 'Measure it')")
    parser.add_argument("--yes", action="store_true", help="generate without asking (the grid size is still printed)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the variants (their infotext values) and the job count; contact no server, write nothing")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
        if args.dry_run:
            dry_run(cfg)
            return 0
        summary = run(cfg, confirm=None if args.yes else _ask)
    except EvalError as exc:
        print(f"fastface-eval: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("\nfastface-eval: interrupted; what is on disk is kept; run the same command again to resume",
              file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(f"fastface-eval: internal error ({type(exc).__name__}: {exc}); --debug shows where", file=sys.stderr)
        return 1
    return 4 if summary.get("failed") else 0
