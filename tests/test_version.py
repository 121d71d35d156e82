"""Which FastFace this is: the versions agree."""
from __future__ import annotations

import configparser
import datetime
import pathlib
import re
import tomllib

import pytest

import fastface

ROOT = pathlib.Path(__file__).resolve().parent.parent


# -- the versions agree ------------------------------------------------------------------------------
def changelog_top_entry() -> tuple[str, datetime.date]:
    """'## 0.2.0 — 2026-12-05': the first version heading of CHANGELOG.md."""
    for line in (ROOT / "CHANGELOG.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            found = re.fullmatch(r"## (\d+\.\d+\.\d+) — (\d{4}-\d{2}-\d{2})", line.strip())
            assert found, f"the top entry is '## <version> — <yyyy-mm-dd>', not {line!r}"
            return found.group(1), datetime.date.fromisoformat(found.group(2))
    pytest.fail("CHANGELOG.md has no version entry")


def metadata_ini() -> configparser.ConfigParser:
    """Read as A1111 1.10.1 reads it (modules/extensions.py L43-54: a plain ConfigParser)."""
    config = configparser.ConfigParser()
    assert config.read(ROOT / "metadata.ini") == [str(ROOT / "metadata.ini")]
    return config


def test_package_pyproject_metadata_and_changelog_say_the_same_version():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    changelog, _ = changelog_top_entry()
    assert fastface.__version__ == pyproject == metadata_ini().get("Extension", "Version") == changelog == "0.2.0"


def test_changelog_entry_is_dated():
    _, date = changelog_top_entry()
    assert date == datetime.date(2026, 12, 5)


def test_the_webui_still_reads_the_metadata_it_needs():
    """The Version key sits beside what A1111, Forge and Neo read: the name and the load order."""
    config = metadata_ini()
    assert config.get("Extension", "Name") == "sd-webui-fastface"
    assert config.get("scripts/fastface_webui.py", "After") == "sd-webui-controlnet"
