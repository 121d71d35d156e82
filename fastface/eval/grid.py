"""What is generated: the prompts file, the identity photos, and the identities × prompts ×
presets × seeds jobs with their file names (made safe, kept inside the output folder)."""
from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from dataclasses import dataclass
from typing import Sequence

from .config import ConfigError, EvalError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass(frozen=True)
class Prompt:
    index: int
    text: str

    @property
    def category(self) -> str:
        """The authors' convention: a ';' separates the style part of a style prompt."""
        return "style" if ";" in self.text else "realistic"


def read_prompts(path: str, lowercase: bool = True) -> list[Prompt]:
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the prompts ({exc})") from None
    prompts = []
    for line in lines:
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        prompts.append(Prompt(len(prompts), text.lower() if lowercase else text))
    if not prompts:
        raise ConfigError(f"{path}: no prompts (one a line; '#' starts a comment)")
    return prompts


def read_identities(folder: str) -> dict[str, list[str]]:
    """Subfolders with photos (one identity each) and loose photos (one identity each, by file stem)."""
    out: dict[str, list[str]] = {}
    for entry in sorted(os.listdir(folder)):
        full = os.path.join(folder, entry)
        if os.path.isdir(full):
            photos = sorted(os.path.join(full, f) for f in os.listdir(full) if f.lower().endswith(IMAGE_EXTS))
            if photos:
                out[entry] = photos
        elif entry.lower().endswith(IMAGE_EXTS):
            out.setdefault(os.path.splitext(entry)[0], []).append(full)
    if not out:
        raise ConfigError(f"{folder}: no identity photos (subfolders of photos, or photos, {'/'.join(IMAGE_EXTS)})")
    return out


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str, max_len: int = 48) -> str:
    """A file-name part from free text: ASCII letters, digits, '.', '_', '-' only; no leading dot;
    at most `max_len` characters (a short hash keeps shortened or emptied names distinct)."""
    ascii_text = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode()
    name = _UNSAFE.sub("_", ascii_text).strip("._-")
    name = re.sub(r"_{2,}", "_", name)
    digest = hashlib.sha1(str(text).encode("utf-8")).hexdigest()[:8]
    if not name:
        return "x" + digest
    if len(name) > max_len:
        name = name[: max_len - 9].rstrip("._-") + "_" + digest
    return name


@dataclass(frozen=True)
class Job:
    identity: str
    prompt: Prompt
    preset: str
    seed: int

    @property
    def key(self) -> tuple:
        return (self.identity, self.prompt.index, self.preset, self.seed)

    def relpath(self) -> str:
        return os.path.join("images", safe_name(self.identity), safe_name(self.preset),
                            f"{self.prompt.index:03d}_{safe_name(self.prompt.text, 40)}_s{self.seed}.png")

    def label(self) -> str:
        return f"{self.identity} / prompt {self.prompt.index} / {self.preset} / seed {self.seed}"


def make_jobs(identities: dict, prompts: Sequence[Prompt], presets: Sequence[str], seeds: Sequence[int]) -> list[Job]:
    return [Job(i, p, pr, s) for i in identities for p in prompts for s in seeds for pr in presets]


def inside(root: str, path: str) -> str:
    """`path` under `root`, refusing anything that would leave it."""
    root_real = os.path.realpath(root)
    full = os.path.realpath(os.path.join(root_real, path))
    if os.path.commonpath([root_real, full]) != root_real:
        raise EvalError(f"refusing to write outside the output folder: {path}")
    return full
