"""Every `FastFace note` in its infotext form (issue #17): each note FastFace can write, through
the WebUI's own writer and parser (A1111 v1.10.1 / Forge 2, tests/infotext_standin.py),
keeps its words and punctuation.

The catalogue below lists every note text in the code, found by reading the source (`ast`): a new
`job.note(...)` (or readout reason) fails `test_every_note_in_the_code_is_in_the_catalogue` until
an example of it is added here, and then it is checked like the others."""
from __future__ import annotations

import ast
import itertools
import json
import pathlib
import re

import pytest

from fastface.config import FastFaceArgs, Issue
from fastface.hosts.common import NOTE_KEY, Job, no_face_note, not_applied_note, note_value, rejected_note
from fastface.infotext import INFOTEXT_KEY, to_infotext
from fastface.presets import PRESETS
from fastface.views import likeness

from infotext_standin import parameter_line, parse_parameter_line, quote

NOTE_MAKERS = ("no_face_note", "not_applied_note")   # functions that build a note, called wherever
HOSTS = pathlib.Path(__file__).resolve().parents[2] / "fastface" / "hosts"
VIEWS = pathlib.Path(__file__).resolve().parents[2] / "fastface" / "views"

# note template as read from the code ({} where a value is filled in) -> an example of the text
CATALOGUE = {
    # hosts/a1111
    "DCG skipped: AND prompts / edit models are not supported (attention transform still on)": None,
    "A1111 skipped the negative prompt on some steps (NGMS / skip early CFG): DCG used α = 1 there": None,
    "sd-webui-controlnet's IP-Adapter code was not found: no attention transform": None,
    "hires pass left to the WebUI (FastFace's hires option is off)": None,
    "this sampler has no CFG denoiser FastFace knows: FastFace is off for this pass": None,
    "PuLID unit: mode {} ({} zero tokens, projection {}), Invert first token does not apply to PuLID":
        "PuLID unit: mode Fidelity (8 zero tokens, projection ortho_v2), Invert first token does not apply to PuLID",
    "a PuLID unit with a setting FastFace does not know is left to sd-webui-controlnet": None,
    "PuLID's K/V projections were not the bias-free ones FastFace knows: its zero tokens are computed explicitly": None,
    # both hosts: an identity unit the kind table names (hosts/common.py note_units)
    "{} unit: {} face tokens (no background token), Invert first token does not apply to {}":
        "InstantID unit: 16 face tokens (no background token), Invert first token does not apply to InstantID",
    # hosts/forge
    "a ControlNet unit weights cond and uncond differently: the id-only branch takes its own UNet call": None,
    "AND prompts: DCG uses Forge's weighted average of the sub-prompts as the full branch": None,
    "no negative prediction on some steps: DCG used α = 1 there": None,
    "the id-only rows could not join Forge's batch (another UNet wrapper?): one more UNet call per step": None,
    "this Forge called none of FastFace's hooks before its UNet call: one more UNet call per step": None,
    "the negative prompt could not join Forge's batch (area, mask, strength or several entries): "
    "one more UNet call per step": None,
    "this Forge has no hook before its UNet call: the id-only branch takes its own UNet call": None,
    "the other cfg function was skipped on steps without a negative prediction": None,
    "another extension's cfg function ({}) is chained after DCG":
        "another extension's cfg function (dynamic_thresholding) is chained after DCG",
    "this Forge has no conditioning modifiers or cfg function: DCG is off": None,
    "attention transform skipped: {} is not supported on Forge":
        "attention transform skipped: IP-Adapter weight type 'channel' is not supported on Forge",
    "this sampler has no step callback: steps are counted from model calls": None,
    "Forge's calc_cond_uncond_batch was not found: DCG is off": None,
    # both hosts: no FaceID unit (hosts/common.py no_face_note), examples below for every preset
    "no_face_note": None,
    # both hosts: IP-Adapter units the WebUI dropped (hosts/common.py not_applied_note), examples below
    "not_applied_note": None,
    # hosts/readout.py (the readout's own reasons; the models' reasons come from views/likeness.py)
    "likeness readout skipped after an error ({}: {})":
        "likeness readout skipped after an error (RuntimeError: ONNX session failed)",
    "likeness readout off: no face found in the FaceID unit's image(s)": None,
    "likeness readout off: the FaceID unit has no image or embedding FastFace can read{}":
        "likeness readout off: the FaceID unit has no image or embedding FastFace can read (unit 0: an empty image)",
    # views/likeness.py (returned to the readout as its reason)
    "likeness readout off: {}{} not installed in the WebUI's Python":
        "likeness readout off: insightface, onnxruntime are not installed in the WebUI's Python",
    "likeness readout off: no {} face models found (searched {}); set {} to the folder that holds det_10g.onnx and w600k_r50.onnx":
        likeness.not_found_message(["/webui/models/insightface/models/buffalo_l", "/webui/extensions/sd-webui-controlnet/annotator/downloads/insightface/models/buffalo_l"]),
    "likeness readout off: the face models in {} did not load ({}: {})":
        "likeness readout off: the face models in /webui/models/insightface/models/buffalo_l did not load (InvalidProtobuf: bad file)",
}


def _template(node) -> str | None:
    """The text a call passes, with {} for what is filled in; None for a bare variable."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _template(node.left), _template(node.right)
        return (left if left is not None else "{}") + (right if right is not None else "{}")
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) in NOTE_MAKERS:
        return node.func.id
    if isinstance(node, ast.IfExp):
        return "{}"
    return None


def notes_in_code() -> set[str]:
    found = set()
    for path in sorted(HOSTS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
            text = None
            if name in NOTE_MAKERS:   # its text is checked through the examples below
                text = name
            elif name == "note" and node.args:
                text = _template(node.args[0])
            elif name == "_stop" and len(node.args) == 3:
                text = _template(node.args[2])
            if text is not None:
                found.add(text)
    tree = ast.parse((VIEWS / "likeness.py").read_text())
    inner = {id(c) for n in ast.walk(tree) if isinstance(n, ast.BinOp) for c in (n.left, n.right)}
    for node in ast.walk(tree):   # the reasons the readout passes on: strings starting "likeness readout"
        whole = isinstance(node, ast.JoinedStr) or (isinstance(node, ast.BinOp) and id(node) not in inner)
        text = _template(node) if whole else None
        if text and text.startswith("likeness readout"):
            found.add(text)
    return {re.sub(r"(\{\})+", "{}", t) for t in found} - {"{}"}


def test_every_note_in_the_code_is_in_the_catalogue():
    in_code = notes_in_code()
    assert len(in_code) >= 20
    catalogue = {re.sub(r"(\{\})+", "{}", t) for t in CATALOGUE}
    assert in_code - catalogue == set(), "add an example of each new note to CATALOGUE"
    assert catalogue - in_code == set(), "a note in CATALOGUE is no longer in the code"


def _examples() -> list[str]:
    out = []
    for template, example in CATALOGUE.items():
        if template in NOTE_MAKERS:
            continue
        text = example or template
        if example is not None:
            pattern = re.escape(re.sub(r"(\{\})+", "{}", template)).replace(r"\{\}", ".+")
            assert re.fullmatch(pattern, example), (template, example)
        out.append(text)
    for where, preset, readout in itertools.product(("sd-webui-controlnet", "Forge's ControlNet"), PRESETS, (True, False)):
        out.append(no_face_note(where, PRESETS[preset].replace(readout=readout)))
    models = (["ip-adapter-faceid-plusv2_sd15 [b8a6f754]"],
              ["ip-adapter_sd15 [6a3f6166]", "InsightFace+CLIP-H (IPAdapter)"],
              ["ip-adapter_pulid_sdxl_fp16", "ip-adapter-faceid_sdxl", "ip-adapter-plus_sdxl_vit-h"])
    for names, preset, readout_runs in itertools.product(models, PRESETS, (True, False)):
        out.append(not_applied_note(names, PRESETS[preset], readout_runs))
    out.append(rejected_note(Issue("am_mode", "expected one of off, scale-power, softmask; got 'sharpen'", True)))
    out.append("turned off after an internal error")
    return out


EXAMPLES = _examples()


@pytest.mark.parametrize("note", EXAMPLES)
def test_each_note_keeps_its_words_and_punctuation_in_the_infotext(note):
    job = Job(args=PRESETS["Realistic"].replace(enabled=True))
    job.note(note)
    params = job.infotext_params()
    assert params[NOTE_KEY] == note                                  # written as it reads in the log
    line = parameter_line({"Steps": 4, "Sampler": "Euler", "Seed": 1, **params})
    assert f"{NOTE_KEY}: {quote(note)}" in line                      # shown: the sentence, quoted if it has , or :
    assert json.dumps(note, ensure_ascii=False) == f'"{note}"'      # no escapes to read around
    parsed = parse_parameter_line(line)
    assert parsed[NOTE_KEY] == note and parsed[INFOTEXT_KEY] == to_infotext(job.args)   # and read back whole
    assert parsed["Seed"] == "1"                                     # the keys after it are intact


def test_several_notes_and_rejected_settings_read_back_together():
    job = Job(args=PRESETS["Softmask only"].replace(enabled=True),
              issues=[Issue("a_list", "expected a number, got 'x'", True)])
    job.note(no_face_note("sd-webui-controlnet", job.args))
    job.note("hires pass left to the WebUI (FastFace's hires option is off)")
    job.failed = "a1111 set-up: RuntimeError: boom"
    value = job.infotext_params()[NOTE_KEY]
    assert value == note_value([
        "no FaceID unit in sd-webui-controlnet: no attention transform, no likeness readout",
        "hires pass left to the WebUI (FastFace's hires option is off)",
        "turned off after an internal error", "rejected a_list (expected a number, got 'x')"])
    assert value.count("; ") == 3
    assert parse_parameter_line(parameter_line({"Steps": 4, "Seed": 1, NOTE_KEY: value}))[NOTE_KEY] == value


def test_no_faceid_note_says_what_still_runs():
    where = "sd-webui-controlnet"
    assert no_face_note(where, PRESETS["Realistic"]) == (
        "no FaceID unit in sd-webui-controlnet: DCG runs without the face branch, no attention transform, "
        "no likeness readout")
    assert no_face_note(where, PRESETS["Stylistic"].replace(readout=False)) == (
        "no FaceID unit in sd-webui-controlnet: DCG runs without the face branch")
    assert no_face_note(where, PRESETS["Softmask only"]) == (
        "no FaceID unit in sd-webui-controlnet: no attention transform, no likeness readout")
    assert no_face_note(where, PRESETS["Off"].replace(readout=False)) == (
        "no FaceID unit in sd-webui-controlnet: FastFace changes nothing")


def test_unapplied_ip_adapter_note_names_each_model_and_the_server_log():
    log_says = "installed no IP-Adapter layers (the WebUI's IP-Adapter did not apply, its error is in the server log)"
    assert not_applied_note(["ip-adapter-faceid-plusv2_sd15 [b8a6f754]"], PRESETS["Realistic"], False) == (
        f"the ControlNet unit with ip-adapter-faceid-plusv2_sd15 [b8a6f754] {log_says}: DCG runs without the face "
        "branch, no attention transform, no likeness readout")
    assert not_applied_note(["a", "b", "c"], PRESETS["Realistic"], True) == (
        f"the ControlNet units with a, b and c {log_says}: DCG runs without the face branch, no attention transform")
    assert not_applied_note(["a"], PRESETS["Off"], True).endswith(": FastFace changes nothing")
    assert ";" not in not_applied_note(["a"], PRESETS["Realistic"], False)   # "; " separates the notes
