"""Shared by the data adapter tests: records written into every container that
:func:`paralleldecode.data.sources.read_source` reads.

Imported as a plain module (``from data_helpers import ...``): pytest puts this folder, which
has no ``__init__.py``, on ``sys.path``. The name is specific so that no other test folder's
helper module can shadow it.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pyarrow
import pyarrow.parquet as pq


def write(path: Path, text: str) -> str:
    """Writes ``text`` to ``path`` as UTF-8 and returns the path as a string."""
    path.write_text(text, encoding="utf-8")
    return str(path)


def json_lines(records: list) -> str:
    """``records`` as JSON lines, one record a line."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def containers(tmp_path: Path, rows: list[dict]) -> dict[str, object]:
    """The same rows as a JSON list, JSON lines, parquet, a ``datasets.Dataset`` and a plain
    list, by name.

    The files are ``rows.jsonl`` (the JSON list), ``rows.json`` (the JSON lines) and
    ``rows.parquet`` in ``tmp_path``: the extensions deliberately mislead, so the layout must
    be read from the content.
    """
    parquet = tmp_path / "rows.parquet"
    pq.write_table(pyarrow.Table.from_pylist(rows), parquet)
    return {
        "JSON list": write(tmp_path / "rows.jsonl", json.dumps(rows, ensure_ascii=False)),
        "JSON lines": write(tmp_path / "rows.json", json_lines(rows)),
        "parquet": str(parquet),
        "datasets.Dataset": datasets.Dataset.from_list(rows),
        "in memory": rows,
    }
