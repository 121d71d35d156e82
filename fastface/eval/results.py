"""results.csv: one row per image, appended and flushed as each image is done, and read back
when a run resumes."""
from __future__ import annotations

import csv
import os
import threading

from .config import EvalError

CSV_FIELDS = ("identity", "prompt_index", "prompt", "category", "preset", "seed", "id", "face_found",
              "seconds", "server", "file", "clip_t", "ae")


def read_rows(path: str) -> list[dict]:
    if not os.path.isfile(path):
        return []
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise EvalError(f"{path}: cannot read the earlier results ({exc}); move it away to start afresh") from None


def row_key(row: dict) -> tuple:
    return (row["identity"], int(row["prompt_index"]), row["preset"], int(row["seed"]))


def _upgrade_header(path: str) -> None:
    """A results.csv of an older version (fewer columns) rewritten with today's, its rows kept, so
    that appended rows line up (written beside it, then moved over it)."""
    with open(path, newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh), [])
    if tuple(header) == CSV_FIELDS:
        return
    rows = read_rows(path)
    tmp = path + ".upgrade"
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS, extrasaction="ignore", restval="")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


class ResultsFile:
    """results.csv, appended and flushed one row at a time (a crash loses at most the row in hand)."""

    def __init__(self, path: str):
        self.path = path
        self.lock = threading.Lock()
        new = not os.path.isfile(path) or os.path.getsize(path) == 0
        if not new:
            _upgrade_header(path)
        self.fh = open(path, "a", newline="", encoding="utf-8")
        self.writer = csv.DictWriter(self.fh, fieldnames=CSV_FIELDS, extrasaction="ignore")
        if new:
            self.writer.writeheader()
            self.fh.flush()

    def add(self, row: dict) -> None:
        with self.lock:
            self.writer.writerow(row)
            self.fh.flush()
            os.fsync(self.fh.fileno())

    def close(self) -> None:
        self.fh.close()
