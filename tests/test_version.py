"""Which FastFace this is: the versions agree, the commit is read from the folder's own `.git` files
(a fake `.git` per layout, and a real git where one is installed), and the start-up line's format."""
from __future__ import annotations

import configparser
import datetime
import os
import pathlib
import re
import shutil
import subprocess
import tomllib

import pytest
from hypothesis import given, strategies as st

import fastface
from fastface.version import NO_GIT, UNREADABLE, commit_label, extension_folder, startup_line

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHA = "0123456789abcdef0123456789abcdef01234567"
OTHER = "fedcba9876543210fedcba9876543210fedcba98"


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


# -- the commit of the extension's folder ---------------------------------------------------------------
def write(path: pathlib.Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_no_dot_git_is_no_git(tmp_path):
    assert commit_label(str(tmp_path)) == NO_GIT == "no git"


def test_detached_head(tmp_path):
    write(tmp_path / ".git" / "HEAD", SHA.upper() + "\n")
    assert commit_label(str(tmp_path)) == "0123456"


def test_branch_with_a_loose_ref(tmp_path):
    write(tmp_path / ".git" / "HEAD", "ref: refs/heads/main\n")
    write(tmp_path / ".git" / "refs" / "heads" / "main", SHA + "\n")
    write(tmp_path / ".git" / "packed-refs", f"{OTHER} refs/heads/main\n")   # the loose ref is newer
    assert commit_label(str(tmp_path)) == "0123456"


def test_branch_in_packed_refs(tmp_path):
    write(tmp_path / ".git" / "HEAD", "ref: refs/heads/feature/x\n")
    write(tmp_path / ".git" / "packed-refs",
          "# pack-refs with: peeled fully-peeled sorted \n"
          f"{OTHER} refs/heads/feature\n"
          f"{SHA} refs/heads/feature/x\n"
          f"^{OTHER}\n"
          f"{OTHER} refs/tags/v0.1\n")
    assert commit_label(str(tmp_path)) == "0123456"


def test_linked_worktree_reads_its_head_and_the_main_repository_refs(tmp_path):
    main = tmp_path / "main" / ".git"
    worktree_git = main / "worktrees" / "wt"
    write(worktree_git / "HEAD", "ref: refs/heads/version\n")
    write(worktree_git / "commondir", "../..\n")
    write(main / "packed-refs", f"{SHA} refs/heads/version\n")
    write(tmp_path / "wt" / ".git", f"gitdir: {worktree_git}\n")
    assert commit_label(str(tmp_path / "wt")) == "0123456"


def test_relative_gitdir_file(tmp_path):
    write(tmp_path / "modules" / "ext" / "HEAD", SHA + "\n")   # a submodule's git directory
    write(tmp_path / "ext" / ".git", "gitdir: ../modules/ext\n")
    assert commit_label(str(tmp_path / "ext")) == "0123456"


@pytest.mark.parametrize("head", ["ref: refs/heads/gone\n", "garbage\n", "", "ref: refs/heads/.invalid\n"])
def test_a_head_that_cannot_be_followed_is_said(tmp_path, head):
    """A missing branch, a broken HEAD, git 2.45's reftable (HEAD names `.invalid`): not 'no git'."""
    write(tmp_path / ".git" / "HEAD", head)
    assert commit_label(str(tmp_path)) == UNREADABLE


def test_a_symbolic_ref_loop_ends(tmp_path):
    write(tmp_path / ".git" / "HEAD", "ref: refs/heads/a\n")
    write(tmp_path / ".git" / "refs" / "heads" / "a", "ref: refs/heads/b\n")
    write(tmp_path / ".git" / "refs" / "heads" / "b", "ref: refs/heads/a\n")
    assert commit_label(str(tmp_path)) == UNREADABLE


def test_unreadable_files_never_raise(tmp_path):
    write(tmp_path / ".git" / "HEAD", "")
    (tmp_path / ".git" / "HEAD").write_bytes(b"\xff\xfe\x00bad")
    assert commit_label(str(tmp_path)) == UNREADABLE
    assert commit_label(str(tmp_path / "does-not-exist")) == NO_GIT


@given(st.text(alphabet="0123456789abcdef", min_size=40, max_size=40))
def test_any_detached_commit_gives_its_first_seven_characters(tmp_path_factory, sha):
    folder = tmp_path_factory.mktemp("repo")
    write(folder / ".git" / "HEAD", sha)
    assert commit_label(str(folder)) == sha[:7]


GIT = shutil.which("git")


def git(folder, *args) -> str:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run([GIT, "-C", str(folder), *args], check=True, capture_output=True, text=True,
                          env=env, timeout=60).stdout.strip()


@pytest.mark.skipif(GIT is None, reason="git is not installed")
def test_agrees_with_git_itself_on_a_branch_packed_detached_and_in_a_worktree(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "a.txt").write_text("a")
    git(repo, "add", "a.txt")
    git(repo, "commit", "-q", "-m", "one")
    assert commit_label(str(repo)) == git(repo, "rev-parse", "--short=7", "HEAD")
    git(repo, "pack-refs", "--all")                       # the branch now only in packed-refs
    assert not (repo / ".git" / "refs" / "heads" / "main").exists()
    assert commit_label(str(repo)) == git(repo, "rev-parse", "--short=7", "HEAD")
    (repo / "a.txt").write_text("b")
    git(repo, "commit", "-q", "-am", "two")               # a loose ref again, newer than the packed one
    assert commit_label(str(repo)) == git(repo, "rev-parse", "--short=7", "HEAD")
    git(repo, "worktree", "add", "-q", "-b", "side", str(tmp_path / "wt"), "HEAD~1")
    assert commit_label(str(tmp_path / "wt")) == git(tmp_path / "wt", "rev-parse", "--short=7", "HEAD")
    git(repo, "checkout", "-q", "--detach", "HEAD~1")
    assert commit_label(str(repo)) == git(repo, "rev-parse", "--short=7", "HEAD")


@pytest.mark.skipif(GIT is None, reason="git is not installed")
def test_a_copy_inside_another_repository_is_not_given_that_repository_commit(tmp_path):
    """FastFace copied (no `.git`) into a WebUI checkout: `git rev-parse` would name the WebUI's commit."""
    git(tmp_path, "init", "-q")
    extension = tmp_path / "extensions" / "sd-webui-fastface"
    extension.mkdir(parents=True)
    assert commit_label(str(extension)) == NO_GIT


def test_extension_folder_is_the_repository_root():
    assert pathlib.Path(extension_folder()) == ROOT


# -- the start-up line --------------------------------------------------------------------------------
def test_startup_line_format():
    assert startup_line("0.2.0", "e34b2da", "AUTOMATIC1111 v1.10.1, sd-webui-controlnet 1.1.455") == \
        "[FastFace] 0.2.0 (e34b2da) on AUTOMATIC1111 v1.10.1, sd-webui-controlnet 1.1.455"
    assert startup_line("0.2.0", NO_GIT, "unknown host") == "[FastFace] 0.2.0 (no git) on unknown host"
