"""Hypothesis strategies shared by the tests: random *valid* FastFaceArgs."""
from hypothesis import strategies as st

from fastface.config import FIELD_NAMES, FastFaceArgs, field_kind, meta


def _field_strategy(name):
    kind, m = field_kind(name), meta(name)
    if kind == "bool":
        return st.booleans()
    if kind == "choice":
        return st.sampled_from(m["choices"])
    number = st.floats(min_value=m["lo"], max_value=m["hi"], allow_nan=False, allow_infinity=False)
    if kind == "list":
        return st.lists(number, min_size=1, max_size=8).map(tuple)
    return number


valid_args = st.fixed_dictionaries({n: _field_strategy(n) for n in FIELD_NAMES}).map(
    lambda d: FastFaceArgs(**d))
