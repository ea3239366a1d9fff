"""Read records from JSONL, JSON, Parquet, a `datasets` directory, a hub dataset name, or a
labeling database (`labels.db[#project]`, exported as `tether label export` does).

Every record comes with where it came from (`file:line` for JSONL, `file: row N` otherwise),
so that a bad row can be reported precisely.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tether.errors import DataError


@dataclass
class Row:
    where: str  # "data/train.jsonl:17"
    record: Any


class BadRow(DataError):
    """One malformed row; `skip_bad_rows` may skip it instead of stopping."""


def read_rows(source: str) -> Iterator[Row]:
    from tether.labeling.export import is_database, read_database

    if is_database(source):  # people's labels, straight from the labeling app's database
        yield from (Row(where, record) for where, record in read_database(source))
        return
    path = Path(source).expanduser()
    if not path.exists():
        if _looks_like_hub_name(source):
            yield from _read_hub_dataset(source)
            return
        raise DataError(f"{source}: no such file or directory")
    if path.is_dir():
        yield from _read_saved_dataset(path)
    elif path.suffix == ".jsonl":
        yield from _read_jsonl(path)
    elif path.suffix == ".json":
        yield from _read_json(path)
    elif path.suffix == ".parquet":
        yield from _read_parquet(path)
    else:
        raise DataError(f"{path}: unsupported data file type '{path.suffix}' "
                        f"(use .jsonl, .json, .parquet or a `datasets` directory)")


def read_all_rows(source: str, what: str) -> list[Row]:
    """Every row of a source; none at all is an error naming the source (`what`: what its
    rows should be, for the message)."""
    rows = list(read_rows(source))
    if not rows:
        raise DataError(f"{source}: no {what} (the file is empty)")
    return rows


def _looks_like_hub_name(source: str) -> bool:
    """`name` or `owner/name` without a file suffix; anything else missing is a local path."""
    return (source.count("/") <= 1 and "." not in source
            and not source.startswith(("/", "~")) and bool(source.strip("/")))


def _read_jsonl(path: Path) -> Iterator[Row]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            try:
                # utf-8-sig on the first line: editors on Windows write a byte-order mark.
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                yield Row(where, BadRow(f"{where}: not valid UTF-8 (byte {e.start})"))
                continue
            if not line.strip():
                continue
            try:
                yield Row(where, json.loads(line))
            except json.JSONDecodeError as e:
                yield Row(where, BadRow(f"{where}: invalid JSON: {e.msg} (column {e.colno})"))


def _read_json(path: Path) -> Iterator[Row]:
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    if isinstance(data, dict):  # {"train": [...], "test": [...]} or {"data": [...]}
        lists = {k: v for k, v in data.items() if isinstance(v, list)}
        if "train" in lists:
            data = lists["train"]
        elif len(lists) == 1:
            data = next(iter(lists.values()))
        else:
            raise DataError(f"{path}: expected a list of records, or an object holding a "
                            f"'train' list (found: {', '.join(lists) or 'no lists'})")
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of records")
    for i, record in enumerate(data):
        yield Row(f"{path}: record {i}", record)


def _read_parquet(path: Path) -> Iterator[Row]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path}: cannot read Parquet: {e}") from None
    for i, record in enumerate(table.to_pylist()):
        yield Row(f"{path}: row {i}", record)


def _read_saved_dataset(path: Path) -> Iterator[Row]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except FileNotFoundError:
        raise DataError(f"{path}: a directory, but not one saved by datasets.save_to_disk") \
            from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise DataError(f"{path}: a DatasetDict without a 'train' split "
                            f"(has: {', '.join(ds)})")
        ds = ds["train"]
    for i, record in enumerate(ds):
        yield Row(f"{path}: row {i}", record)


def _read_hub_dataset(name: str) -> Iterator[Row]:
    import datasets

    try:
        ds = datasets.load_dataset(name, split="train")
    except Exception as e:  # offline, unknown name, ...: all the user can act on is the text
        raise DataError(f"{name}: no such local file, and loading it as a hub dataset failed: "
                        f"{e}") from None
    for i, record in enumerate(ds):
        yield Row(f"{name}: row {i}", record)
