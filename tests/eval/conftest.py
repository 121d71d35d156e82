"""Fixtures of the fastface-eval tests: fake WebUI servers (stopped after each test) and a workspace
with two identities and three prompts. Puts tests/ (shared helpers such as likeness_models) and
this folder (eval_support) on sys.path."""
import os
import sys

import pytest
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
for folder in (HERE, os.path.dirname(HERE)):
    if folder not in sys.path:
        sys.path.insert(0, folder)

from eval_support import FakeWebUI  # noqa: E402


@pytest.fixture
def servers():
    made = []

    def make(**kw):
        s = FakeWebUI(**kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


def _photo(path, color):
    Image.new("RGB", (64, 64), color).save(path)


@pytest.fixture
def workspace(tmp_path):
    ids = tmp_path / "ids"
    (ids / "alice").mkdir(parents=True)
    _photo(ids / "alice" / "1.png", (200, 50, 40))
    _photo(ids / "bob.png", (30, 200, 90))  # a loose photo is an identity too
    (tmp_path / "prompts.txt").write_text(
        "# portraits\nA Photo of a person in a park\n\nwatercolor painting; a person reading\na person in an empty room\n")
    return tmp_path

