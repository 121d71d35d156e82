"""Infotext round trips, including through A1111's quote / regex / unquote.

A1111 v1.10.1's `quote`, `unquote` and parameter regex come from tests/infotext_standin.py (copied
from `modules/infotext_utils.py`, cited there); the two helpers below join and read a parameter line
with them, so the test does not need a WebUI.
"""
import logging

import pytest
from hypothesis import given, strategies as st

from fastface.config import FIELD_NAMES, VIEW_FIELDS, FastFaceArgs
from fastface.infotext import (INFOTEXT_KEY, expand_pasted_params, from_infotext, parse_infotext, paste_key,
                               read_pasted, to_infotext, ui_values)
from fastface.presets import PRESETS, apply_preset

from infotext_standin import quote as a1111_quote, re_param as RE_PARAM, unquote as a1111_unquote
from strategies import valid_args


def a1111_infotext_line(extra):
    params = {"Steps": 4, "Sampler": "Euler", "CFG scale": 1.0, "Seed": 1, **extra, "Version": "v1.10.1"}
    return ", ".join(k if k == v else f"{k}: {a1111_quote(v)}" for k, v in params.items())


def a1111_parse(line):
    res = {}
    for key, value in RE_PARAM.findall(line):
        res[key.strip()] = a1111_unquote(value) if value.startswith('"') else value
    return res


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_round_trip_and_write_only_the_preset(name):
    text = to_infotext(PRESETS[name])
    assert text == f"preset={name}"
    assert from_infotext(text) == PRESETS[name]


def test_changed_fields_only():
    args = PRESETS["Realistic"].replace(alpha_peak=2.0, am_mode="softmask", alpha_custom=(1.0, 2.0))
    assert to_infotext(args) == "preset=Realistic, a=2.0, a_list=1.0/2.0, am=softmask"


@given(valid_args)
def test_random_args_round_trip_through_the_webui(args):
    text = to_infotext(args)
    assert "show_attention" not in text     # a view option, not a generation parameter
    args = args.replace(show_attention=False)   # so it comes back as the default
    assert from_infotext(text) == args
    parsed = a1111_parse(a1111_infotext_line({INFOTEXT_KEY: text, "Denoising strength": 0.5}))
    assert parsed[INFOTEXT_KEY] == text
    assert parsed["Steps"] == "4" and parsed["Version"] == "v1.10.1" and parsed["Denoising strength"] == "0.5"
    assert from_infotext(parsed[INFOTEXT_KEY]) == args


@pytest.mark.parametrize("text", [
    "", "   ", None, 42, "garbage", "a=2", "preset=Nope", "preset=Realistic, =3", "preset", '"',
    "preset=Realistic, zz=1", "preset=Realistic, a=lots",
])
def test_malformed_input_gives_defaults_or_partial_values_and_a_warning(text, caplog):
    with caplog.at_level(logging.WARNING, logger="fastface"):
        args = from_infotext(text)
    assert isinstance(args, FastFaceArgs)
    assert caplog.records, "a warning is logged"
    if not (isinstance(text, str) and text.startswith("preset=Realistic")):
        assert args == FastFaceArgs()
    else:
        assert args.enabled and args.preset == "Realistic" and args.alpha_peak == 1.5


def test_out_of_range_value_is_clamped_on_paste(caplog):
    args = from_infotext("preset=Stylistic, a=50")
    assert args.alpha_peak == 10.0 and args.enabled


@given(st.text(max_size=80))
def test_parsing_never_raises(text):
    assert isinstance(from_infotext(text), FastFaceArgs)


def test_expand_pasted_params_for_the_ui_paste_path():
    args = PRESETS["Realistic portrait"].replace(beta_peak=4.0)
    params = {"Steps": "4", INFOTEXT_KEY: to_infotext(args)}
    expand_pasted_params(params)
    assert params[paste_key("enabled")] is True
    assert params[paste_key("preset")] == "Realistic portrait"
    assert params[paste_key("beta_peak")] == 4.0
    assert params[paste_key("alpha_custom")] == "1.0/1.5/1.5/1.0"
    assert all(paste_key(n) in params for n in FIELD_NAMES if n not in VIEW_FIELDS)
    assert not any(paste_key(n) in params for n in VIEW_FIELDS)   # a paste leaves them alone


def test_show_attention_is_never_written_nor_read_from_infotext():
    for name in PRESETS:
        args = PRESETS[name].replace(show_attention=True)
        assert to_infotext(args) == f"preset={name}"
        line = a1111_infotext_line({INFOTEXT_KEY: to_infotext(args)})
        assert "show_attention" not in line and "Show face attention" not in line
    # hand-written into an infotext, it is an unknown key (rejected, ignored)
    assert from_infotext("preset=Realistic, show_attention=true").show_attention is False
    args, issues = parse_infotext("preset=Realistic, show_attention=true")
    assert any(i.field == "show_attention" and i.rejected for i in issues)
    # presets keep it: it is not a method parameter
    assert apply_preset(FastFaceArgs(show_attention=True), "Stylistic").show_attention is True


def test_image_without_fastface_turns_it_off_on_paste():
    params = {"Steps": "4"}
    expand_pasted_params(params)
    assert params[paste_key("enabled")] is False


def test_read_pasted_for_the_api_path_parses_the_raw_key():
    args = PRESETS["Stylistic"].replace(phi=0.5)
    params = {INFOTEXT_KEY: to_infotext(args)}
    assert {n: read_pasted(params, n) for n in FIELD_NAMES} == ui_values(args)
    assert read_pasted({}, "enabled") is False


def test_readout_is_written_only_when_off_and_survives_paste():
    from fastface.presets import apply_preset

    on = PRESETS["Realistic"]
    assert on.readout and "readout" not in to_infotext(on)  # default on: pruned like a preset value
    off = on.replace(readout=False)
    text = to_infotext(off)
    assert text == "preset=Realistic, readout=false"
    assert from_infotext(text) == off
    assert apply_preset(off, "Off").readout is False  # a preset never turns the readout back on
    # an infotext from before the readout existed pastes with the default (on)
    assert from_infotext("preset=Off").readout is True
