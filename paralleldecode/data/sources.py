"""Reading a data source into located records, whatever its container.

Adapters accept the original release format of their data set and Hugging Face rows; the
container varies: a JSON document, a JSON list, JSON lines, a parquet file, an in-memory
``datasets.Dataset`` (or any iterable of mappings), or a hub id. :func:`read_source` turns
all of these into either the parsed JSON document or a list of ``(location, record)`` pairs,
where the location (``line 7``, ``row 3``, ``item[2]``) lets every error name its record.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paralleldecode.data.records import DataError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_FILE_SUFFIXES = {".json", ".jsonl", ".ndjson", ".txt", ".parquet"}


@dataclass
class Source:
    """What :func:`read_source` found.

    Attributes:
        origin: how errors name the source (``"hotpot file /x/dev.json"``).
        document: the parsed JSON when the file held one JSON value (object or list).
        records: ``(location, record)`` pairs for row containers (JSON lines, parquet,
            ``datasets.Dataset``, hub), and for a JSON list (``item[i]``).
    """

    origin: str
    document: Any = None
    records: list[tuple[str, Any]] | None = None

    def rows(self) -> list[tuple[str, Any]]:
        """Located records; a JSON list document counts as rows, an object does not."""
        if self.records is not None:
            return self.records
        if isinstance(self.document, list):
            return [(f"item[{i}]", r) for i, r in enumerate(self.document)]
        raise DataError(f"{self.origin}: expected rows (a list, JSON lines or parquet), found a JSON object")


def read_source(source: Any, dataset: str, split: str = "validation",
                hub_config: str | None = None) -> Source:
    """Read ``source`` for adapter ``dataset``.

    Args:
        source: a path, a hub id, a ``datasets.Dataset`` or an iterable of mappings.
        dataset: the data set's name, used in error messages.
        split: the split to load from the hub (files have one split).
        hub_config: the hub data set's configuration name (e.g. ``"distractor"``).

    Raises:
        DataError: a missing file, a line that is not JSON, or an unreachable hub.
    """
    if not isinstance(source, (str, os.PathLike)):
        origin = f"{dataset} {type(source).__name__}"
        return Source(origin, records=[(f"row {i}", r) for i, r in enumerate(_iterate(source, origin))])
    path = Path(source).expanduser()
    if path.exists():
        return _read_file(path, dataset)
    if isinstance(source, str) and _HUB_ID.match(source) and path.suffix.lower() not in _FILE_SUFFIXES:
        return _read_hub(source, dataset, split, hub_config)
    raise DataError(f"{dataset} file {path} does not exist")


def _iterate(rows: Iterable[Any], origin: str) -> Iterable[Any]:
    try:
        return list(rows)
    except TypeError as err:
        raise DataError(f"{origin}: not a file path, hub id or iterable of rows") from err


def _read_file(path: Path, dataset: str) -> Source:
    origin = f"{dataset} file {path}"
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as err:  # noqa: BLE001 - any reader failure is a bad file
            raise DataError(f"{origin}: not a readable parquet file ({err})") from err
        return Source(origin, records=[(f"row {i}", r) for i, r in enumerate(table.to_pylist())])
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{origin}: not UTF-8 text (JSON, JSON lines) or parquet") from err
    if not text.strip():
        raise DataError(f"{origin} is empty")
    try:
        return Source(origin, document=json.loads(text))
    except json.JSONDecodeError:
        pass
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append((f"line {number}", json.loads(line)))
        except json.JSONDecodeError as err:
            raise DataError(f"{origin}: line {number} is not valid JSON ({err.msg})") from err
    return Source(origin, records=records)


def _read_hub(hub_id: str, dataset: str, split: str, hub_config: str | None) -> Source:
    import datasets

    name = f"{hub_id}" + (f" ({hub_config})" if hub_config else "")
    try:
        ds = datasets.load_dataset(hub_id, hub_config, split=split)
    except Exception as err:  # noqa: BLE001 - offline, unknown id or split
        raise DataError(
            f"{dataset}: could not load {name} split {split!r} from the hub ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); give a local file path as data_path"
        ) from err
    origin = f"{dataset} hub {name}[{split}]"
    return Source(origin, records=[(f"row {i}", r) for i, r in enumerate(ds)])


def field(record: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """``record[key]``, checked to be a mapping entry of type ``kind``, or a DataError
    naming ``where`` (origin + location + id) and the key."""
    if not isinstance(record, Mapping):
        raise DataError(f"{where} is not an object")
    if key not in record:
        raise DataError(f"{where} has no {key!r} key")
    value = record[key]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataError(f"{where}: {key!r} should be {names}, got {type(value).__name__}")
    return value
