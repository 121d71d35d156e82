"""A1111's infotext writer and parser, copied from A1111 v1.10.1 (82a973c0; Forge 2 `dfdcbab6`
has the same code): `quote`/`unquote` (modules/infotext_utils.py L56-70), `re_param_code` (L16),
the parameter-line loop of `parse_generation_parameters` (L254-281) and the line `create_infotext`
joins (modules/processing.py L812). The notes' tests run every note through these."""
from __future__ import annotations

import json
import re

re_param_code = r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)'
re_param = re.compile(re_param_code)


def quote(text):
    if ',' not in str(text) and '\n' not in str(text) and ':' not in str(text):
        return text

    return json.dumps(text, ensure_ascii=False)


def unquote(text):
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text

    try:
        return json.loads(text)
    except Exception:
        return text


def parameter_line(generation_params: dict) -> str:
    """processing.py L812: the last line of the infotext."""
    return ", ".join([k if k == v else f'{k}: {quote(v)}' for k, v in generation_params.items() if v is not None])


def parse_parameter_line(lastline: str) -> dict:
    """infotext_utils.py L254-281 for the last line (sizes, styles and defaults left out)."""
    assert len(re_param.findall(lastline)) >= 3, "A1111 reads a line of fewer than 3 parameters as prompt"
    res = {}
    for k, v in re_param.findall(lastline):
        if v[0] == '"' and v[-1] == '"':
            v = unquote(v)
        res[k] = v
    return res
