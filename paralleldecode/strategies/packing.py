"""Packing: several groups' runs of one strategy share every engine call.

A strategy is written for one group: it asks the run context for generations and waits for
each. To decode ``N`` groups together without the strategy knowing, each group's run goes
in a worker thread whose context carries a :class:`Packer`. An engine call from a worker
does not run at once; it waits until every worker still running has asked for its next call
(or finished). The calling thread then stacks the waiting calls' layouts as the rows of one
layout (:func:`~paralleldecode.decoding.layout.stack_layouts`), decodes it once with one
budget and stop strings per stream, and hands each worker the streams that are its own.
So ``batch`` decodes the rows of all groups in one loop, ``sequential`` turn ``k`` of every
group, the dependency strategies a DAG layer of every group; cross-batch mixing stays
within each group, since stacking keeps their streams in separate mixing groups.

Calls are stacked only when they can share a loop (same engine, same kind of positions,
same sampling settings); others run as separate calls in the same round. Workers are
ordered by their group's place in the batch, so a packed run is deterministic, and under
greedy decoding every group gets the tokens it gets alone. The threads only wait: every
model call runs in the thread that called :meth:`Packer.run`.

Costs: each worker sees the call's figures with ``share`` set to its part of the call (one
over the number of groups in it), which :class:`~paralleldecode.strategies.base.Cost` uses
for passes and decoding time; prompt and generated tokens are each group's own.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from paralleldecode.decoding import GenerationConfig, GenerationResult, Layout, stack_layouts
from paralleldecode.decoding.constraints import stack_constraints


@dataclass
class _Call:
    worker: int
    engine: Any
    layout: Layout
    config: GenerationConfig | None  # None: a prefill only
    keep_cache: bool
    constraint: Any = None
    result: GenerationResult | None = None
    error: BaseException | None = None
    done: bool = False

    def key(self) -> tuple:
        c = self.config
        sampling = None if c is None else (c.temperature, c.top_p, c.seed, c.eos_token_ids, c.output_logits)
        return (id(self.engine), c is None, self.keep_cache, self.layout.columnar, self.layout.isolate, sampling)


@dataclass
class Packer:
    """Coordinates the workers of one :meth:`run` (see the module docstring)."""

    _cond: threading.Condition = field(default_factory=threading.Condition)
    _waiting: dict[int, _Call] = field(default_factory=dict)
    _running: set[int] = field(default_factory=set)
    _local: threading.local = field(default_factory=threading.local)
    calls: int = 0  # engine calls made, for tests and figures

    def run(self, tasks: list[Callable[[], Any]], between: Callable[[], None] | None = None) -> list[Any]:
        """Run ``tasks`` (one per group) together; each returns its value or the exception
        it raised. ``between`` is called before every round of engine calls (a place to
        stop early: whatever it raises ends the run, the workers are abandoned)."""
        results: list[Any] = [None] * len(tasks)
        with self._cond:
            self._running = set(range(len(tasks)))

        def work(i: int, task: Callable[[], Any]) -> None:
            self._local.worker = i
            try:
                results[i] = task()
            except BaseException as err:  # noqa: BLE001 - handed back to the caller
                results[i] = err
            finally:
                with self._cond:
                    self._running.discard(i)
                    self._cond.notify_all()

        threads = [threading.Thread(target=work, args=(i, t), daemon=True, name=f"packed-group-{i}")
                   for i, t in enumerate(tasks)]
        for t in threads:
            t.start()
        while True:
            with self._cond:
                self._cond.wait_for(lambda: all(i in self._waiting for i in self._running))
                if not self._running:
                    break
                round_ = [self._waiting.pop(i) for i in sorted(self._waiting)]
            if between is not None:
                between()
            self._execute(round_)
            with self._cond:
                for call in round_:
                    call.done = True
                self._cond.notify_all()
        for t in threads:
            t.join()
        return results

    def call(self, engine, layout: Layout, config: GenerationConfig | None, keep_cache: bool,
             constraint=None) -> GenerationResult:
        """A worker's engine call: wait for the round, return this worker's part of it."""
        worker = getattr(self._local, "worker", None)
        if worker is None:  # not inside run(): nothing to pack with
            return _direct(engine, layout, config, keep_cache, constraint)
        call = _Call(worker, engine, layout, config, keep_cache, constraint)
        with self._cond:
            self._waiting[worker] = call
            self._cond.notify_all()
            self._cond.wait_for(lambda: call.done)
        if call.error is not None:
            raise call.error
        return call.result

    def _execute(self, round_: list[_Call]) -> None:
        by_key: dict[tuple, list[_Call]] = {}
        for call in round_:
            by_key.setdefault(call.key(), []).append(call)
        for calls in by_key.values():
            self.calls += 1
            try:
                _run_stacked(calls)
            except Exception as err:  # noqa: BLE001 - one group's failure must not fail the others
                if len(calls) == 1:
                    calls[0].error = err
                    continue
                for call in calls:  # find the one that fails; the rest still get answers
                    try:
                        call.result = _direct(call.engine, call.layout, call.config, call.keep_cache,
                                              call.constraint)
                    except Exception as err:  # noqa: BLE001
                        call.error = err


def _direct(engine, layout: Layout, config: GenerationConfig | None, keep_cache: bool,
            constraint=None) -> GenerationResult:
    if config is None:
        return engine.prefill(layout)
    return engine.generate(layout, config, keep_cache=keep_cache, constraint=constraint)


def _run_stacked(calls: list[_Call]) -> None:
    engine = calls[0].engine
    if len(calls) == 1:
        c = calls[0]
        c.result = _direct(engine, c.layout, c.config, c.keep_cache, c.constraint)
        return
    layout = stack_layouts([c.layout for c in calls], engine.pad_id)
    if calls[0].config is None:
        res = engine.prefill(layout)
    else:
        configs = [c.config for c in calls for _ in range(c.layout.num_streams)]
        constraint = stack_constraints([c.constraint for c in calls], [c.layout.num_streams for c in calls])
        res = engine.generate(layout, configs, keep_cache=calls[0].keep_cache, constraint=constraint)
    start = 0
    for c in calls:
        n = c.layout.num_streams
        c.result = dataclasses.replace(
            res, streams=res.streams[start:start + n],
            caches=res.caches[start:start + n] if res.caches is not None else None,
            prompt_tokens_processed=c.layout.processed_tokens, share=1.0 / len(calls),
            constraint_seconds=getattr(c.constraint, "seconds", 0.0))
        start += n
