"""Read records from JSONL, JSON, Parquet, a `datasets` directory, a directory of data files
(a hub dataset's files, cloned), a hub dataset name, or a labeling database
(`labels.db[#project]`, exported as `tether label export` does).

Every record comes with where it came from (`file:line` for JSONL, `file: row N` otherwise),
so that a bad row can be reported precisely. A source holding several splits (a DatasetDict, a
hub dataset, a JSON object of lists) gives the one asked for, never another in its place; a
column mapping renames the columns a dataset has to the fields tether reads.
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


def read_rows(source: str, split: str = "train", subset: str = "",
              columns: dict[str, str] | None = None) -> Iterator[Row]:
    """The rows of `source`. `split` picks one split of a source that has several (a missing
    one is an error naming those there are); `subset` is the configuration of a hub dataset
    or a directory of data files (files have none); `columns` maps a field tether reads to the
    column holding it ({"prompt": "question"}). The source may carry these itself, as a query
    (split_source): openai/gsm8k?subset=main&split=test&prompt=question."""
    source, options = split_source(source)
    split = options.pop("split", split)
    subset = options.pop("subset", subset)
    columns = {**(columns or {}), **options}
    rows = _read_source(source, split, subset)
    if columns:
        rows = (Row(row.where, rename_columns(row.record, columns, row.where)) for row in rows)
    yield from rows


def _read_source(source: str, split: str, subset: str) -> Iterator[Row]:
    from tether.labeling.export import is_database, read_database

    if is_database(source):  # people's labels, straight from the labeling app's database
        yield from (Row(where, record) for where, record in read_database(source))
        return
    path = Path(source).expanduser()
    if not path.exists():
        if _looks_like_hub_name(source):
            yield from _read_with_datasets(source, split, subset)
            return
        raise DataError(f"{source}: no such file or directory")
    if path.is_dir():
        yield from _read_directory(path, split, subset)
    elif path.suffix == ".jsonl":
        yield from _read_jsonl(path)
    elif path.suffix == ".json":
        yield from _read_json(path, split)
    elif path.suffix == ".parquet":
        yield from _read_parquet(path)
    else:
        raise DataError(f"{path}: unsupported data file type '{path.suffix}' "
                        f"(use .jsonl, .json, .parquet or a `datasets` directory)")


def split_source(source: str) -> tuple[str, dict[str, str]]:
    """(the source, its reader options) of `SOURCE?key=value&...`: split, subset, and any
    other key a field name mapped to the column holding it (prompt=question). Every setting
    that names data (prompts of sample, eval, ppo, the pipeline's task) takes this form, where
    sft, rm and dpo also have data.split, data.subset and data.columns."""
    path, sep, query = source.partition("?")
    if not sep:
        return source, {}
    options = {}
    for item in query.split("&"):
        key, eq, value = item.partition("=")
        if not (eq and key.strip() and value.strip()):
            raise DataError(f"{source}: '{item}' is not key=value (after '?': split=NAME, "
                            f"subset=NAME, or FIELD=COLUMN such as prompt=question)")
        options[key.strip()] = value.strip()
    return path, options


def rename_columns(record: Any, columns: dict[str, str], where: str) -> Any:
    """The record with each mapped column under the name of the field it holds. A column the
    row lacks is a bad row naming the columns it has: the usual cause is a misspelt mapping."""
    if not isinstance(record, dict):
        return record  # a BadRow, or a non-object that the record's parser reports
    out = dict(record)
    for field, column in columns.items():
        if column not in record:
            return BadRow(f"{where}: no column '{column}' (mapped to '{field}'); the row's "
                          f"columns: {', '.join(map(str, record)) or 'none'}")
        out.pop(column, None)  # two fields may read one column
    for field, column in columns.items():
        out[field] = record[column]
    return out


def read_all_rows(source: str, what: str, split: str = "train", subset: str = "",
                  columns: dict[str, str] | None = None) -> list[Row]:
    """Every row of a source; none at all is an error naming the source (`what`: what its
    rows should be, for the message)."""
    rows = list(read_rows(source, split, subset, columns))
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


def _read_json(path: Path, split: str) -> Iterator[Row]:
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    if isinstance(data, dict):  # {"train": [...], "test": [...]} or {"data": [...]}
        lists = {k: v for k, v in data.items() if isinstance(v, list)}
        if split in lists:
            data = lists[split]
        elif len(lists) == 1 and next(iter(lists)) not in SPLIT_NAMES:
            data = next(iter(lists.values()))  # {"data": [...]}: the file's one set of rows
        else:
            raise DataError(f"{path}: expected a list of records, or an object holding a "
                            f"'{split}' list (found: {', '.join(lists) or 'no lists'})")
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of records")
    for i, record in enumerate(data):
        yield Row(f"{path}: record {i}", record)


# Names of splits: a JSON object's one list under another split's name is not the one asked for.
SPLIT_NAMES = frozenset({"train", "test", "validation", "valid", "dev", "eval"})


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


def _read_directory(path: Path, split: str, subset: str) -> Iterator[Row]:
    """A directory saved by `datasets.save_to_disk`, else one of data files as a hub dataset
    holds them (read by `datasets.load_dataset`, offline)."""
    import datasets

    if not any((path / name).exists() for name in SAVED_DATASET_FILES):
        yield from _read_with_datasets(str(path), split, subset)
        return
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"{path}: no split '{split}' (its splits: {', '.join(ds)})")
        ds = ds[split]
    for i, record in enumerate(ds):
        yield Row(f"{path}: row {i}", record)


# What save_to_disk writes at the top of a Dataset's and of a DatasetDict's directory.
SAVED_DATASET_FILES = ("dataset_info.json", "state.json", "dataset_dict.json")


def _read_with_datasets(name: str, split: str, subset: str) -> Iterator[Row]:
    """A hub dataset by name, or a local directory of data files, through load_dataset."""
    import datasets

    where = f"{name}[{subset}]" if subset else name
    try:
        ds = datasets.load_dataset(name, subset or None, split=split)
    except ValueError as e:
        # Unknown split or subset: datasets' message lists the ones there are.
        raise DataError(f"{where}: {e}") from None
    except Exception as e:  # offline, unknown name...: the text is what the user can act on
        if not Path(name).is_dir():
            raise DataError(f"{where}: no such local file, and loading it as a hub dataset "
                            f"failed: {e}") from None
        if isinstance(e, FileNotFoundError):
            raise DataError(f"{name}: a directory, but not one saved by datasets.save_to_disk "
                            f"nor one holding data files (.jsonl, .json, .parquet, .csv)") \
                from None
        raise DataError(f"{where}: reading it with datasets failed: {e}") from None
    for i, record in enumerate(ds):
        yield Row(f"{where} ({split}): row {i}", record)
