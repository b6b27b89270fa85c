"""Reading a data source into located records, whatever its container.

Adapters accept the original release format of their data set and Hugging Face rows; the
container varies: a JSON document, a JSON list, JSON lines, a parquet file, an in-memory
``datasets.Dataset`` (or any iterable of mappings), or a hub id. :func:`read_source` turns
all of these into either the parsed JSON document or a list of ``(location, record)`` pairs,
where the location (``line 7``, ``row 3``, ``item[2]``) lets every error name its record.

The record helpers below (:func:`field` and its kin) check one key of a record and raise a
`DataError` naming ``where`` (origin, location and, where known, the record's id) and the key,
so every adapter's messages read the same way.
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
        from_hub: the records were loaded from the hub, so the split asked for applies.
    """

    origin: str
    document: Any = None
    records: list[tuple[str, Any]] | None = None
    from_hub: bool = False

    def rows(self, *, single_record: bool = False,
             non_empty: bool = False) -> list[tuple[str, Any]]:
        """Located records; a JSON list document counts as rows.

        Args:
            single_record: also accept a JSON object document, as the one record located
                ``the single record``: a JSON-lines file holding one record parses as one
                JSON object, not as lines. Without it, an object document is an error (for
                adapters whose object documents are a whole-file layout of their own).
            non_empty: refuse a source without records.

        Returns:
            ``(location, record)`` pairs in source order.

        Raises:
            DataError: the document is not a list (nor, with ``single_record``, an object),
                or ``non_empty`` and there are no records.
        """
        if self.records is not None:
            rows = self.records
        elif isinstance(self.document, list):
            rows = [(f"item[{i}]", r) for i, r in enumerate(self.document)]
        elif single_record and isinstance(self.document, Mapping):
            rows = [("the single record", self.document)]
        else:
            found = type(self.document).__name__
            raise DataError(f"{self.origin}: expected rows (a list, JSON lines or parquet), "
                            f"found a JSON {'object' if found == 'dict' else found}")
        if non_empty and not rows:
            raise DataError(f"{self.origin} holds no records")
        return rows


def read_source(source: Any, dataset: str, split: str = "validation",
                hub_config: str | None = None, accepted: str | None = None) -> Source:
    """Read ``source`` for adapter ``dataset``.

    Args:
        source: a path, a hub id, a ``datasets.Dataset`` or an iterable of mappings.
        dataset: the data set's name, used in error messages.
        split: the split to load from the hub (files have one split).
        hub_config: the hub data set's configuration name (e.g. ``"distractor"``).
        accepted: the adapter's accepted layouts in words, added to the error for a file
            that is neither JSON nor JSON lines.

    Returns:
        The parsed source; a blank file gives no records (each adapter says what it
        expected to find).

    Raises:
        DataError: a missing file, a line that is not JSON, or an unreachable hub.
    """
    if not isinstance(source, (str, os.PathLike)):
        origin = f"{dataset} {type(source).__name__}"
        return Source(origin, records=[(f"row {i}", r) for i, r in enumerate(_iterate(source, origin))])
    path = Path(source).expanduser()
    if path.exists():
        return _read_file(path, dataset, accepted)
    if isinstance(source, str) and _HUB_ID.match(source) and path.suffix.lower() not in _FILE_SUFFIXES:
        return _read_hub(source, dataset, split, hub_config)
    raise DataError(f"{dataset} file {path} does not exist")


def _iterate(rows: Iterable[Any], origin: str) -> Iterable[Any]:
    try:
        return list(rows)
    except TypeError as err:
        raise DataError(f"{origin}: not a file path, hub id or iterable of rows") from err


def _read_file(path: Path, dataset: str, accepted: str | None) -> Source:
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
    except OSError as err:  # a folder, no permission
        raise DataError(f"{origin} cannot be read: {err}") from err
    if not text.strip():
        return Source(origin, records=[])
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
            expected = f"; expected {accepted}" if accepted else ""
            raise DataError(f"{origin}: line {number} is not valid JSON ({err.msg}){expected}") from err
    return Source(origin, records=records)


def _read_hub(hub_id: str, dataset: str, split: str, hub_config: str | None) -> Source:
    import datasets

    name = f"{hub_id}" + (f" ({hub_config})" if hub_config else "")
    try:
        ds = datasets.load_dataset(hub_id, hub_config, split=split)
    except Exception as err:  # noqa: BLE001 - offline, unknown id or split
        raise DataError(
            f"{dataset}: no local file {hub_id!r} exists, and loading {name} split {split!r} from "
            f"the hub failed: the hub could not be reached or has no such data set "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); give a "
            f"local file path as data_path"
        ) from err
    origin = f"{dataset} hub {name}[{split}]"
    return Source(origin, records=[(f"row {i}", r) for i, r in enumerate(ds)], from_hub=True)


def field(record: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """Reads one key of a record, checked.

    Args:
        record: the parsed record that should be a mapping holding ``key``.
        key: the key to read.
        kind: the accepted type(s) of the value.
        where: origin + location + id of the record (see :func:`with_id`), put at the front
            of the error message.

    Returns:
        ``record[key]``.

    Raises:
        DataError: ``record`` is not a mapping, lacks ``key``, or holds another type there.
    """
    if not isinstance(record, Mapping):
        raise DataError(f"{where} is not an object")
    if key not in record:
        raise DataError(f"{where} has no {key!r} key")
    value = record[key]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataError(f"{where}: {key!r} should be {names}, got {type(value).__name__}")
    return value


def optional_field(record: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """Like :func:`field`, but None where ``record`` lacks ``key`` or holds None there.

    Tables (parquet, ``datasets``) fill keys a record lacks with None, so None means absent.

    Raises:
        DataError: as :func:`field`, for a value that is present and not None.
    """
    if isinstance(record, Mapping) and record.get(key) is None:
        return None
    return field(record, key, kind, where)


def text_field(record: Any, key: str, where: str) -> str:
    """Like :func:`field` for a string that must not be blank (a question, a background).

    Raises:
        DataError: as :func:`field`, or the string is empty or only white space.
    """
    value = field(record, key, str, where)
    if not value.strip():
        raise DataError(f"{where}: {key!r} is empty")
    return value


def strings(record: Any, key: str, where: str) -> list[str]:
    """Like :func:`field` for a list of strings.

    Raises:
        DataError: as :func:`field`, or the list holds something other than strings.
    """
    return string_list(field(record, key, list, where), key, where)


def string_list(values: Any, key: str, where: str) -> list[str]:
    """Checks that ``values`` (already read, e.g. a list item) is a list of strings.

    Args:
        values: the value to check.
        key: how the message names the value (a key, or a path such as ``context[0][1]``).
        where: origin + location + id of the record.

    Returns:
        ``values``.

    Raises:
        DataError: ``values`` is not a list of strings.
    """
    if not (isinstance(values, list) and all(isinstance(v, str) for v in values)):
        raise DataError(f"{where}: {key!r} should be a list of strings, got {values!r:.100}")
    return values


def with_id(where: str, record: Any, id_key: str = "id") -> str:
    """``where`` plus the record's id when it has one, so messages point at a findable record.

    Args:
        where: origin and location of the record (``"hotpot file /x/dev.json: line 3"``).
        record: the record; its id is added only when it is a mapping holding ``id_key``,
            whatever the id's value (a malformed id is then reported by the key's check).
        id_key: the key of the record's id.

    Returns:
        ``"<where> (<id_key> <id value repr>)"``, or ``where`` when there is no id.
    """
    if isinstance(record, Mapping) and id_key in record:
        return f"{where} ({id_key} {record[id_key]!r})"
    return where
