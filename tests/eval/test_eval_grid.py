"""fastface.eval.grid: the jobs' file names are sanitised and stay inside the output folder."""
import os

import pytest

from fastface.eval.config import EvalError
from fastface.eval.grid import Job, Prompt, inside, safe_name


def test_file_names_are_sanitised_and_stay_inside(tmp_path):
    assert safe_name("../../etc/passwd") == "etc_passwd"
    assert "/" not in safe_name("a/b\\c") and "\\" not in safe_name("a/b\\c")
    assert safe_name("..") .startswith("x") and safe_name("") .startswith("x")
    assert safe_name("Zoë, café") == "Zoe_cafe"
    long_a, long_b = safe_name("a" * 300 + "1"), safe_name("a" * 300 + "2")
    assert len(long_a) <= 48 and long_a != long_b
    job = Job("../evil", Prompt(0, "x/../../y; style"), "Off", 1)
    target = inside(str(tmp_path), job.relpath())
    assert target.startswith(str(tmp_path.resolve()) + os.sep)
    with pytest.raises(EvalError):
        inside(str(tmp_path), "../outside.png")

