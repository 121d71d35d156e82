import dataclasses
import re

import pytest
from hypothesis import given, strategies as st

from fastface import config
from fastface.config import FIELD_NAMES, FastFaceArgs, Issue
from fastface.presets import from_script_args, validate
from fastface.presets import PRESETS

# The authors' code defaults (shared/docs/fastface_reference.md §7), written out independently.
REFERENCE_DEFAULTS = dict(
    alpha_peak=1.5, beta_peak=3.0, phi=0.75, rescale_steps="all",
    sp_s_down=1.55, sp_s_up=1.45, sp_p=1.3, clamp_max=10.0,
    sm_quantile=0.65, sm_d_first=7.5, sm_d_later=5.0, sm_s_first=1.0, sm_s_later=1.55,
    sm_adain=0.7, sm_invert_first=True, am_down=True, am_mid=False, am_up=True,
    alpha_custom=(1.0, 1.5, 1.5, 1.0), beta_custom=(1.0, 3.0, 3.0, 1.0),
)
A1111_KEY = re.compile(r"^\w[\w \-/]+$")


def test_defaults_are_the_reference_code_values():
    args = FastFaceArgs()
    for name, value in REFERENCE_DEFAULTS.items():
        assert getattr(args, name) == value, name
    assert args.enabled is False and args.preset == "Realistic"


def test_every_field_has_key_label_tip_and_a_sane_range():
    keys = [config.meta(n)["key"] for n in FIELD_NAMES]
    assert len(set(keys)) == len(keys)
    for name in FIELD_NAMES:
        m = config.meta(name)
        assert m["label"] and m["tip"], name
        assert re.fullmatch(r"[a-z0-9_]+", m["key"]), name
        assert A1111_KEY.match("FastFace " + m["key"]), name
        if config.field_kind(name) in ("float", "list"):
            assert m["lo"] < m["hi"], name
            default = getattr(FastFaceArgs(), name)
            for x in (default if isinstance(default, tuple) else (default,)):
                assert m["lo"] <= x <= m["hi"], name


def test_out_of_range_values_are_clamped_with_a_message_naming_the_field():
    args, issues = validate({"preset": "Realistic", "alpha_peak": 99, "phi": -1, "alpha_custom": "1/50/2"})
    assert args.alpha_peak == 10.0 and args.phi == 0.0 and args.alpha_custom == (1.0, 10.0, 2.0)
    fields = {i.field for i in issues}
    assert fields == {"alpha_peak", "phi", "alpha_custom"}
    assert all(not i.rejected for i in issues)
    assert "99 is outside [0, 10]" in str(next(i for i in issues if i.field == "alpha_peak"))


# Values of the wrong kind, one field each (also sent to real servers by tests/webui/soak.py)
WRONG_KIND_VALUES = [
    ("alpha_peak", "lots"), ("alpha_peak", float("nan")), ("alpha_peak", True), ("dcg", "maybe"),
    ("am_mode", "sharpen"), ("schedule", 3), ("alpha_custom", ""), ("alpha_custom", "1/x"),
    ("beta_custom", [1.0] * 151), ("preset", "Ultra"),
]


@pytest.mark.parametrize("name,value", WRONG_KIND_VALUES)
def test_wrong_kind_values_are_rejected_with_a_message_naming_the_field(name, value):
    args, issues = validate({name: value})
    rejected = [i for i in issues if i.rejected]
    assert [i.field for i in rejected] == [name]
    assert getattr(args, name) == getattr(FastFaceArgs(), name)  # the bad value was not used


def test_unknown_field_is_rejected():
    _, issues = validate({"nonsense": 1})
    assert issues == [Issue("nonsense", "unknown field", True)]


def test_bool_and_choice_coercion_is_forgiving():
    args, issues = validate({"dcg": "False", "am_up": 0, "am_mode": "SoftMask", "preset": "realistic PORTRAIT"})
    assert not issues
    assert args.dcg is False and args.am_up is False and args.am_mode == "softmask"
    assert args.preset == "Realistic portrait"


def test_named_values_start_from_the_chosen_preset():
    args, issues = validate({"preset": "Stylistic", "enabled": True})
    assert not issues
    assert args == PRESETS["Stylistic"]


def test_positional_script_args_in_field_order():
    full = PRESETS["Realistic portrait"].replace(alpha_peak=2.0)
    values = [getattr(full, n) for n in FIELD_NAMES]
    values[FIELD_NAMES.index("alpha_custom")] = "1/1.5/1.5/1"  # the UI holds lists as text
    values[FIELD_NAMES.index("beta_custom")] = "1/3/3/1"
    args, issues = from_script_args(values)
    assert not issues and args == full


def test_short_positional_list_takes_the_rest_from_the_preset():
    args, issues = from_script_args([True, "Stylistic"])
    assert not issues and args == PRESETS["Stylistic"]


def test_extra_positional_values_are_reported_not_fatal():
    args, issues = from_script_args([True, "Off"] + [getattr(PRESETS["Off"], n) for n in FIELD_NAMES[2:]] + [1, 2])
    assert args == PRESETS["Off"]
    assert [(i.field, i.rejected) for i in issues] == [("args", False)]


def test_single_dict_of_named_fields_and_short_keys():
    args, issues = from_script_args([{"enabled": True, "preset": "Realistic", "alpha_peak": 2, "b": 4}])
    assert not issues
    assert args == PRESETS["Realistic"].replace(alpha_peak=2.0, beta_peak=4.0)


def test_validated_cleans_a_constructed_instance():
    raw = FastFaceArgs(alpha_peak=-3.0, sm_quantile=1.5)
    clean, issues = raw.validated()
    assert clean.alpha_peak == 0.0 and clean.sm_quantile == 1.0
    assert {i.field for i in issues} == {"alpha_peak", "sm_quantile"}


junk = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
                 st.lists(st.floats(), max_size=4), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@given(st.dictionaries(st.sampled_from(FIELD_NAMES + ("bogus", "a", "p")), junk, max_size=8))
def test_validate_never_raises_and_always_returns_valid_args(values):
    args, issues = validate(values)
    assert isinstance(args, FastFaceArgs)
    again, more = args.validated()
    assert again == args and not more  # whatever came in, what comes out is in range
    assert all(isinstance(i, Issue) for i in issues)


@given(st.lists(junk, max_size=40))
def test_from_script_args_never_raises(values):
    args, _ = from_script_args(values)
    assert isinstance(args, FastFaceArgs)


def test_args_are_immutable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        FastFaceArgs().alpha_peak = 2.0


def test_api_dict_first_then_ui_defaults_is_read_as_the_dict():
    """A1111's API puts the request's args at the script's first slots and keeps UI defaults after."""
    defaults = [getattr(FastFaceArgs(), n) for n in FIELD_NAMES]
    args, issues = from_script_args([{"enabled": True, "preset": "Stylistic"}] + defaults[1:])
    assert not issues and args == PRESETS["Stylistic"]
