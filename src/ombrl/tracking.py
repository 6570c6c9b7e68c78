"""Where a job's numbers go: a CSV file beside its outputs, one row per logged step.

Rows may carry different keys (evaluation rows add returns to training metrics); the header is
the union in first-seen order, written once at the end so the file is always rectangular.
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class CsvLog:
    """Collects metric rows in memory and writes them as one CSV file."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def log(self, row: dict) -> None:
        self.rows.append(dict(row))

    def write(self, path: Path) -> None:
        columns = list(dict.fromkeys(key for row in self.rows for key in row))
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
            writer.writeheader()
            writer.writerows(self.rows)


def write_json(path: Path, document: dict) -> None:
    """Pretty, key-sorted JSON (NaN written as null), so diffs between runs are readable."""

    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        return value

    Path(path).write_text(json.dumps(clean(document), indent=2, sort_keys=True) + "\n")


@contextmanager
def staged_directory(directory: Path) -> Iterator[Path]:
    """Yield a scratch folder beside `directory`; move its files into `directory` on success.

    A job that fails leaves nothing behind in `directory` (no partial outputs); one that
    succeeds replaces each file atomically.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        yield scratch
        directory.mkdir(exist_ok=True)
        for item in scratch.iterdir():
            os.replace(item, directory / item.name)
    finally:
        for item in scratch.iterdir() if scratch.exists() else []:
            item.unlink()
        if scratch.exists():
            scratch.rmdir()
