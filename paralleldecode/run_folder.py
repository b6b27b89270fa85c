"""A predict run's folder: what it holds while running, once finished, and after a crash.

The unit of work is one strategy on one group. As each finishes, its line is appended (and
synced to disk) to the process's part file ``predictions.rank<R>.<run>.jsonl``: the group's
question records, its cost and its strategy figures, as one JSON object. A process killed at
any point therefore loses at most the unit it was computing; a line cut short by the kill
does not parse and is dropped, so that unit is computed again.

At the end, rank 0 merges the run's part files into the finished files, each written to a
temporary name and renamed into place, and only then deletes the part files:

=======================  ==========================================================
``predictions.jsonl``    one record per question and strategy (ordered by strategy,
                         then group, then question)
``group_costs.jsonl``    one line per strategy and group: cost and strategy figures
``groups.jsonl``         the groups asked: context, questions (for the report)
``run.json``             the command, the settings that decide the answers, the
                         package version, when it started and was resumed
``config.yaml``          LightningCLI's record of the whole config
``report.html``          the run as a page (:mod:`paralleldecode.report`)
=======================  ==========================================================

A resumed run (``resume: true``) reads every unit the folder holds, from part files of any
earlier attempt and from the finished files, refuses to go on when the settings that decide
the answers differ from ``run.json``'s, and computes only the missing units and those with a
failed answer (``finish_reason: error``: a server that was down, say); the summary is rebuilt
from all units alike.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from paralleldecode.errors import OptionError

PREDICTIONS = "predictions.jsonl"
GROUP_COSTS = "group_costs.jsonl"
GROUPS = "groups.jsonl"
SETTINGS = "run.json"
PART_GLOB = "predictions.rank*.jsonl"

Key = tuple[str, str]  # (strategy, group id)


class ResumeError(OptionError):
    """A folder cannot be resumed (settings differ, or no fixed folder), or cannot be
    written without ``resume``."""


def unit_key(unit: dict[str, Any]) -> Key:
    return unit["strategy"], unit["group_id"]


def holds_predictions(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` already holds finished or partial predictions."""
    folder = Path(folder)
    return (folder / PREDICTIONS).exists() or any(folder.glob(PART_GLOB))


def refuse_overwrite(folder: str | os.PathLike | None, resume: bool) -> None:
    """The rule for an output folder: resuming needs a fixed one; without resuming, one
    that holds predictions is never written over."""
    if resume and folder is None:
        raise ResumeError("model.resume needs a fixed model.output_dir to resume from (the default, "
                          "a new lightning_logs/version_N folder, is empty every run)")
    if folder is not None and not resume and holds_predictions(folder):
        raise ResumeError(f"model.output_dir {folder} already holds predictions; pass "
                          "--model.init_args.resume true to continue that run, or choose another folder")


def part_path(folder: Path, rank: int, run: str) -> Path:
    return folder / f"predictions.rank{rank}.{run}.jsonl"


def append_unit(path: Path, unit: dict[str, Any]) -> None:
    """Append one unit as one line and sync it to disk: once this returns it survives a kill."""
    line = json.dumps(unit, ensure_ascii=False) + "\n"
    with path.open("a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_units(folder: str | os.PathLike) -> tuple[dict[Key, dict[str, Any]], list[str]]:
    """Every complete unit the folder holds, and a note per line that could not be used.

    Part files are read first (any attempt's), then the finished files; a unit found twice
    is the same work, the first copy is kept.
    """
    folder = Path(folder)
    units: dict[Key, dict[str, Any]] = {}
    notes: list[str] = []
    for part in sorted(folder.glob(PART_GLOB)):
        for n, line in enumerate(part.read_text(encoding="utf-8").splitlines(), 1):
            try:
                unit = json.loads(line)
                key = unit_key(unit)
                unit["records"]  # noqa: B018 - a complete unit has its records
            except (ValueError, KeyError, TypeError):
                notes.append(f"{part.name} line {n} is incomplete (a write cut short); that group is computed again")
                continue
            units.setdefault(key, unit)
    predictions, costs = folder / PREDICTIONS, folder / GROUP_COSTS
    if predictions.exists() and not costs.exists():
        notes.append(f"{predictions} has no {GROUP_COSTS} beside it (written by an older version?); "
                     "its groups are computed again")
    elif predictions.exists():
        records: dict[Key, list[dict[str, Any]]] = {}
        for line in predictions.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            records.setdefault((rec["strategy"], rec["group_id"]), []).append(rec)
        for line in costs.read_text(encoding="utf-8").splitlines():
            unit = json.loads(line)
            if unit_key(unit) in records:
                units.setdefault(unit_key(unit), {**unit, "records": records[unit_key(unit)]})
    return units, notes


def ordered(units: Iterable[dict[str, Any]], strategy_order: list[str]) -> list[dict[str, Any]]:
    """Units in the order of the finished files: by strategy as configured, then by the
    group's place in the data module's list."""
    rank = {name: i for i, name in enumerate(strategy_order)}
    return sorted((u for u in units if u["strategy"] in rank),
                  key=lambda u: (rank[u["strategy"]], u["group_index"]))


def write_finished(folder: Path, units: list[dict[str, Any]]) -> None:
    """``predictions.jsonl`` and ``group_costs.jsonl`` from ``units`` (already ordered)."""
    _write_lines(folder / PREDICTIONS, (rec for u in units for rec in u["records"]))
    _write_lines(folder / GROUP_COSTS, ({k: v for k, v in u.items() if k != "records"} for u in units))


def _write_lines(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_groups(folder: Path, groups) -> None:
    """``groups.jsonl``: each group of the data module's list (in its order) with its
    context and questions, so the report can show them."""
    _write_lines(folder / GROUPS, (
        {"index": i, "id": g.id, "dataset": g.dataset, "background": g.background,
         "title": g.metadata.get("title", ""),
         "questions": [{"id": q.id, "text": q.text, "context": q.context, "options": q.options}
                       for q in g.questions]}
        for i, g in enumerate(groups)))


def remove_parts(folder: Path) -> None:
    for part in folder.glob(PART_GLOB):
        part.unlink(missing_ok=True)


def settings_record(settings: dict[str, Any], version: str) -> dict[str, Any]:
    return {"command": sys.argv, "version": version, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "resumed": [], "settings": _plain(settings)}


def check_settings(folder: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The folder's ``run.json`` after checking that ``settings`` (what decides the
    answers) equal its own; None when it has none.

    Raises:
        ResumeError: naming every setting that differs.
    """
    path = folder / SETTINGS
    if not path.exists():
        return None
    saved = json.loads(path.read_text(encoding="utf-8"))
    old, new = _flat(saved.get("settings", {})), _flat(_plain(settings))
    differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if differ:
        shown = "; ".join(f"{k}: {json.dumps(old.get(k))} then, {json.dumps(new.get(k))} now" for k in differ)
        raise ResumeError(f"cannot resume {folder}: settings that decide the answers differ from the "
                          f"earlier run's ({shown}); choose another model.output_dir or use the same settings")
    return saved


def write_settings(folder: Path, record: dict[str, Any]) -> None:
    _write_json(folder / SETTINGS, record)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _flat(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"seed": 0}}`` as ``{"model.seed": 0}``, leaving out private keys."""
    out = {}
    for k, v in settings.items():
        if str(k).startswith("_"):
            continue
        if isinstance(v, dict) and not prefix:
            out.update(_flat(v, f"{k}."))
        else:
            out[prefix + str(k)] = v
    return out


def _plain(obj: Any) -> Any:
    """``obj`` as JSON would give it back (so saved and fresh settings compare equal)."""
    return json.loads(json.dumps(obj, default=str))


def unit_of(strategy: str, group, group_index: int, run) -> dict[str, Any]:
    """One finished unit (a :class:`~paralleldecode.strategies.GroupRun` on a group)."""
    return {
        "strategy": strategy, "group_id": group.id, "group_index": group_index,
        "cost": dataclasses.asdict(run.cost), "extras": dict(run.extras), "details": dict(run.details),
        "records": [{**r.to_dict(), "group_index": group_index} for r in run.results],
    }


def run_of(unit: dict[str, Any]):
    """The :class:`~paralleldecode.strategies.GroupRun` a unit was written from: its
    records as results (scores recomputed from the answers, as when they were made)."""
    from paralleldecode.strategies import Cost, GroupRun, QuestionResult

    names = {f.name for f in dataclasses.fields(QuestionResult)}
    results = [QuestionResult(**{k: v for k, v in rec.items() if k in names}) for rec in unit["records"]]
    return GroupRun(results, Cost(**unit["cost"]), dict(unit["extras"]), dict(unit.get("details") or {}))
