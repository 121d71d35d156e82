"""Which FastFace this is, in words a bug report can quote: the version, the git commit of the
extension's folder, and the start-up line the WebUI prints when it loads the script.

    [FastFace] 0.2.0 (e34b2da) on AUTOMATIC1111 v1.10.1, sd-webui-controlnet 1.1.455

The commit is read from the folder's own `.git` files (HEAD, loose refs, packed-refs; a linked
worktree's `gitdir:` file and `commondir`), never by running git: nothing is spawned while the
WebUI starts, and a copy of FastFace inside some other repository (a WebUI checkout) is never
reported with that repository's commit, as `git rev-parse` walking up the tree would do.
Pure: files and strings only, no WebUI.
"""
from __future__ import annotations

import os
import re
from typing import Optional

SHORT_HASH = 7            # git's own default abbreviation (`git rev-parse --short`)
NO_GIT = "no git"         # the folder has no `.git` (a zip download, a copy)
UNREADABLE = "git commit unknown"   # a `.git` whose HEAD this reader cannot follow (e.g. reftable)
_HASH = re.compile(r"[0-9a-fA-F]{40}|[0-9a-fA-F]{64}")   # SHA-1 or SHA-256 object names
_SYMREF_DEPTH = 5         # HEAD → branch → … (git itself stops at 5 levels)


def _read(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def git_dir(folder: str) -> Optional[str]:
    """The git directory of `folder` itself: `folder/.git`, or where a `.git` file's `gitdir:` line
    points (linked worktrees, submodules); None when the folder has no `.git`."""
    dot_git = os.path.join(folder, ".git")
    if os.path.isdir(dot_git):
        return dot_git
    text = _read(dot_git) if os.path.isfile(dot_git) else None
    if text and text.startswith("gitdir:"):
        return os.path.join(folder, text[len("gitdir:"):].strip())   # join keeps an absolute path
    return None


def _common_dir(gitdir: str) -> str:
    """Where branches and packed-refs live: a linked worktree's `commondir` names the main git directory."""
    common = _read(os.path.join(gitdir, "commondir"))
    return os.path.join(gitdir, common) if common else gitdir


def _packed_ref(common: str, ref: str) -> Optional[str]:
    """`<hash> <ref>` lines of packed-refs ('#' opens the header, '^' a peeled tag's target)."""
    for line in (_read(os.path.join(common, "packed-refs")) or "").splitlines():
        value, _, name = line.partition(" ")
        if name.strip() == ref and not line.startswith(("#", "^")):
            return value
    return None


def head_commit(gitdir: str) -> Optional[str]:
    """The full object name HEAD resolves to (detached, or through its branch), or None."""
    common = _common_dir(gitdir)
    text = _read(os.path.join(gitdir, "HEAD"))
    for _ in range(_SYMREF_DEPTH):
        if text is None:
            return None
        if _HASH.fullmatch(text):
            return text.lower()
        if not text.startswith("ref:"):
            return None
        ref = text[len("ref:"):].strip()
        # per-worktree refs sit in the worktree's own directory, branches in the common one
        text = (_read(os.path.join(gitdir, ref)) or _read(os.path.join(common, ref))
                or _packed_ref(common, ref))
    return None


def commit_label(folder: str) -> str:
    """The short commit of `folder`'s own checkout, 'no git' without a `.git`, or 'git commit
    unknown' when its HEAD cannot be followed. Never raises."""
    try:
        gitdir = git_dir(folder)
        if gitdir is None:
            return NO_GIT
        commit = head_commit(gitdir)
        return commit[:SHORT_HASH] if commit else UNREADABLE
    except Exception:
        return UNREADABLE


def startup_line(version: str, commit: str, host: str) -> str:
    """`[FastFace] <version> (<commit>) on <host>`: the line to quote in a bug report."""
    return f"[FastFace] {version} ({commit}) on {host}"


def extension_folder() -> str:
    """The folder FastFace runs from (the extension's root: the parent of the `fastface` package)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

