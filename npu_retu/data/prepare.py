"""Read and tokenize training sets: tokenization in worker processes, and a cache of tokenized files.

    train = tokenize_sft_files(files, tokenizer, max_length=4096, too_long="error", skip_bad_rows=False,
                               counter=counter, num_workers=None, cache_dir=None)
    for example, (prompt_ids, expert_ids) in zip(examples, tokenize_rl_examples(examples, tokenizer, experts=1)):
        ...

Both give exactly what one process gives with :func:`~npu_retu.data.schemas.load_sft` and
:func:`~npu_retu.data.tokenize.tokenize_sft` (or ``tokenize_prompt`` / ``tokenize_expert``): the same
ids and masks in the same order, the same rows counted and skipped in the same order with the same
messages, and the same first error. How:

* This process reads and checks the rows, one file (shard) after another, streaming, as ``load_sft``
  does; every bad row is raised or counted here, in order. Chunks of :data:`CHUNK_EXAMPLES` examples
  go to the workers, and their results come back in order, at most two chunks per worker in flight,
  so memory holds the output and not the input. A worker returns a chunk's ids and masks as flat
  int32 / int8 arrays, not Python lists.
* Errors while tokenizing (a row longer than ``max_length`` with ``too_long="error"``, a chat
  template that cannot give the mask) are raised after every file was read, the first in file and
  row order, as in one process where all files are read before any is tokenized. Rows longer than
  ``max_length`` that are skipped are counted after all rows skipped while reading, as there.
* Worker processes are spawned (never forked: the trainer has torch's threads running), get the
  tokenizer once, and start only when a file must really be tokenized. ``num_workers``: None (auto)
  = ``min(8, CPUs)`` when at least :data:`AUTO_MIN_BYTES` of data must be tokenized, else in this
  process (starting workers costs seconds); 0 or 1 = in this process; N = N workers.
* Each file's result is stored in the cache (:mod:`npu_retu.data.token_cache`) and read from it by
  the next run with the same tokenizer, template, ``max_length`` / truncation and file version; a
  file whose tokenization failed is not stored.
"""

from __future__ import annotations

import array
import logging
import os
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from npu_retu.data.errors import BadRowCounter, ChatTemplateError, DataError, SkippedRow, format_source
from npu_retu.data.readers import data_files, read_rows
from npu_retu.data.schemas import RLExample, SFTExample, sft_example_from_row
from npu_retu.data.token_cache import CacheEntry, TokenCache, tokenizer_fingerprint
from npu_retu.data.tokenize import TOO_LONG_CHOICES, TokenizedSet, too_long_error
from npu_retu.errors import EnvironmentFault

logger = logging.getLogger(__name__)

CHUNK_EXAMPLES = 64  # examples per task sent to a worker
AUTO_MIN_BYTES = 32 << 20  # auto num_workers: below this much data to tokenize, stay in this process
MAX_AUTO_WORKERS = 8
TOO_LONG_REASON = "longer than data.max_length"


def available_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def resolve_num_workers(num_workers: int | None, data_bytes: int) -> int:
    """Worker processes to start for ``data_bytes`` of data (0: tokenize in this process)."""
    if num_workers is None:
        num_workers = min(MAX_AUTO_WORKERS, available_cpus()) if data_bytes >= AUTO_MIN_BYTES else 0
    return num_workers if num_workers >= 2 else 0


# --------------------------------------------------------------------------------------------
# SFT


@dataclass
class _File:
    """One data file (shard) on its way through: what was read, what came back, what failed."""

    name: str
    key: str | None
    examples: list[TokenizedSet] = field(default_factory=list)  # pieces, in order
    too_long: list[tuple[str, int]] = field(default_factory=list)  # (source, length), skipped
    failure: Exception | None = None  # the first tokenization error, raised once every file was read
    rows: int = 0
    skipped: list[SkippedRow] = field(default_factory=list)
    read: bool = False  # all rows read
    partial: bool = False  # some rows were not sent (they follow a tokenization error): never cached
    in_flight: int = 0  # chunks sent and not yet back
    pieces: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)  # for the cache
    too_long_rows: list[tuple[int, int]] = field(default_factory=list)  # (row, length), for the cache


def tokenize_sft_files(
    paths: str | Path | Iterable[str | Path],
    tokenizer: Any,
    *,
    max_length: int,
    too_long: Literal["error", "skip", "truncate"] = "error",
    skip_bad_rows: bool = False,
    counter: BadRowCounter | None = None,
    num_workers: int | None = None,
    cache: bool = True,
    cache_dir: str | Path | None = None,
) -> TokenizedSet:
    """The tokenized SFT examples of ``paths`` (files, folders, globs, datasets folders), in order,
    held compactly as flat arrays (:class:`~npu_retu.data.tokenize.TokenizedSet`, ~5 bytes a token).

    The same as ``load_sft(paths, skip_bad_rows=..., counter=...)`` followed by ``tokenize_sft`` on
    each example, with rows longer than ``max_length`` skipped and counted in ``counter`` (reason
    ``longer than data.max_length``, field ``messages``) when ``too_long`` is ``skip``, or when it is
    ``error`` and ``skip_bad_rows`` is set: what the SFT trainer has always done.
    """
    if too_long not in TOO_LONG_CHOICES:
        raise ValueError(f"too_long must be one of {TOO_LONG_CHOICES}, got {too_long!r}")
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths:
        raise DataError("(no files)", "no data files given")
    began = time.perf_counter()
    report_at_end = counter is None
    counter = BadRowCounter() if counter is None else counter
    mode = "skip" if skip_bad_rows and too_long == "error" else too_long
    truncate = mode == "truncate"
    names = [name for path in paths for name in data_files(path)]

    store = TokenCache.open(cache_dir) if cache else None
    fingerprint = tokenizer_fingerprint(tokenizer) if store is not None else None
    if fingerprint is None:
        store = None
    files = [_File(name, _cache_key(store, name, fingerprint, tokenizer, max_length, truncate)) for name in names]
    entries = [store.load(f.key) if store is not None and f.key else None for f in files]
    to_tokenize = sum(Path(f.name).stat().st_size for f, entry in zip(files, entries) if entry is None and Path(f.name).is_file())
    workers = resolve_num_workers(num_workers, to_tokenize)
    stop_at_too_long = mode == "error"

    def finish(file: _File) -> None:
        if store is not None and file.key and file.read and not file.in_flight and file.failure is None and not file.partial:
            _save(store, file)

    def take(results: Iterator[tuple[Any, Any]]) -> bool:
        """Take the results that are back; whether a tokenization error has been seen by now."""
        for (index, sources, rows), chunk in results:
            file = files[index]
            file.in_flight -= 1
            if file.failure is None:
                _take_chunk(file, chunk, sources, rows, mode, max_length, keep_pieces=store is not None)
            finish(file)
        return any(f.failure is not None for f in files)

    failed = False

    with _Workers(workers, tokenizer) as pool:
        for index, (file, entry) in enumerate(zip(files, entries)):
            if entry is not None:
                _replay(file, entry, counter, skip_bad_rows, mode, max_length)
                failed = failed or file.failure is not None
                continue
            rows_before, skips_before = counter.rows[file.name], len(counter.skipped_rows)
            usable = 0
            chunk: list[SFTExample] = []
            rows: list[int] = []
            for row, record in read_rows(file.name, skip_bad_rows=skip_bad_rows, counter=counter):
                try:
                    example = sft_example_from_row(record, file.name, row)
                except DataError as error:
                    if not skip_bad_rows:
                        raise
                    counter.skip(error)
                    continue
                usable += 1
                if failed:
                    file.partial = True
                    continue  # what follows a tokenization error is only read, for its own errors
                chunk.append(example)
                rows.append(row)
                if len(chunk) == CHUNK_EXAMPLES:
                    file.in_flight += 1
                    pool.submit(_sft_chunk, (index, [e.source for e in chunk], rows), chunk, max_length, truncate, stop_at_too_long)
                    chunk, rows = [], []
                    failed = take(pool.ready())
            if usable == 0:
                raise DataError(file.name, f"no usable rows ({counter.summary() or 'all rows were bad'})")
            if chunk and failed:
                file.partial = True
            elif chunk:
                file.in_flight += 1
                pool.submit(_sft_chunk, (index, [e.source for e in chunk], rows), chunk, max_length, truncate, stop_at_too_long)
            file.rows = counter.rows[file.name] - rows_before
            file.skipped = counter.skipped_rows[skips_before:]
            file.read = True
            finish(file)
            failed = take(pool.ready())
        take(pool.ready(drain=True))
        started = pool.pool is not None

    for file in files:
        if file.failure is not None:
            raise file.failure
    pieces: list[TokenizedSet] = []
    for file in files:
        for source, _length in file.too_long:
            counter.skip(source, TOO_LONG_REASON, field="messages")
        pieces.extend(file.examples)
    examples = TokenizedSet.concat(pieces)
    if report_at_end:
        counter.report()
    cached = sum(entry is not None for entry in entries)
    logger.info(
        "tokenized %d examples of %d file(s) in %.1f s: %d from the cache, %d tokenized (%s)", len(examples), len(files),
        time.perf_counter() - began, cached, len(files) - cached, f"{workers} worker processes" if started else "in this process",
    )
    return examples


def _cache_key(store: TokenCache | None, name: str, fingerprint: str | None, tokenizer: Any, max_length: int, truncate: bool) -> str | None:
    if store is None or not Path(name).is_file():
        return None  # read_rows will say what is wrong with it
    try:
        return store.key(name, fingerprint, chat_template=getattr(tokenizer, "chat_template", None), max_length=max_length,
                         truncate=truncate)
    except OSError:
        return None


def _replay(file: _File, entry: CacheEntry, counter: BadRowCounter, skip_bad_rows: bool, mode: str, max_length: int) -> None:
    """A cached file: count its rows and skips as reading it would have, and take its examples."""
    counter.rows[file.name] += entry.rows
    for skipped in entry.skipped:
        error = DataError(file.name, skipped["message"], row=skipped["row"], field=skipped["field"], reason=skipped["reason"])
        if not skip_bad_rows:
            raise error
        counter.skip(error)
    sources = [format_source(file.name, int(row)) for row in entry.example_rows]
    file.examples = [_examples(entry.input_ids, entry.loss_mask, entry.offsets, sources)]
    for row, length in entry.too_long:
        source = format_source(file.name, row)
        if mode == "error":
            file.failure = too_long_error(source, length, max_length)
            break
        file.too_long.append((source, length))


def _take_chunk(file: _File, chunk: _Chunk, sources: list[str], rows: list[int], mode: str, max_length: int, *, keep_pieces: bool) -> None:
    """Take one chunk's results, in order, up to the first tokenization error (kept as the file's failure)."""
    stop = len(sources) if chunk.error is None else chunk.error[0]
    for position, length in chunk.too_long:
        if mode == "error":
            stop = min(stop, position)
            break
    file.examples.append(_examples(chunk.input_ids, chunk.loss_mask, chunk.offsets, [sources[i] for i in chunk.kept if i < stop]))
    for position, length in chunk.too_long:
        if position < stop:
            file.too_long.append((sources[position], length))
            file.too_long_rows.append((rows[position], length))
    if stop < len(sources):
        too_long_here = [length for position, length in chunk.too_long if position == stop]
        file.failure = too_long_error(sources[stop], too_long_here[0], max_length) if too_long_here else _rebuild(chunk.error[1])
    elif keep_pieces:
        file.pieces.append((np.asarray([rows[i] for i in chunk.kept], np.int64), chunk.offsets, chunk.input_ids, chunk.loss_mask))


def _examples(ids: np.ndarray, mask: np.ndarray, offsets: np.ndarray, sources: list[str]) -> TokenizedSet:
    """Examples from flat arrays; ``sources`` may be shorter than ``offsets`` (a chunk cut at an error)."""
    end = int(offsets[len(sources)])
    return TokenizedSet(ids[:end], mask[:end], offsets[: len(sources) + 1], sources)


def _save(store: TokenCache, file: _File) -> None:
    rows = [p[0] for p in file.pieces]
    ids = [p[2] for p in file.pieces]
    offsets, total = [np.zeros(1, np.int64)], 0
    for piece in file.pieces:
        offsets.append(piece[1][1:].astype(np.int64) + total)
        total += int(piece[1][-1])
    entry = CacheEntry(
        rows=file.rows,
        skipped=[{"row": s.row, "field": s.field, "reason": s.reason, "message": s.message} for s in file.skipped],
        too_long=file.too_long_rows,
        example_rows=np.concatenate(rows) if rows else np.zeros(0, np.int64),
        offsets=np.concatenate(offsets),
        input_ids=np.concatenate(ids) if ids else np.zeros(0, np.int32),
        loss_mask=np.concatenate([p[3] for p in file.pieces]) if ids else np.zeros(0, np.int8),
    )
    file.pieces = []
    path = store.save(file.key, entry, file=file.name)
    if path is not None:
        logger.info("%s: %d examples tokenized, cached as %s", file.name, len(entry), path)


# --------------------------------------------------------------------------------------------
# RL


def tokenize_rl_examples(
    examples: Iterable[RLExample],
    tokenizer: Any,
    *,
    experts: int = 0,
    num_workers: int | None = None,
) -> Iterator[tuple[list[int], list[list[int]]]]:
    """``(tokenize_prompt(example.prompt), [tokenize_expert(example.prompt, text) for the first
    `experts` expert trajectories])`` for each example, in order, tokenized ahead in worker
    processes; a chat template error is raised when the iteration reaches its example, as a loop
    that tokenizes one example after another would raise it. (No cache: RL sets are small.)"""
    examples = list(examples)
    text_bytes = sum(len(m["content"]) for e in examples for m in e.prompt) + sum(len(t) for e in examples for t in e.experts[:experts])
    with _Workers(resolve_num_workers(num_workers, text_bytes), tokenizer) as pool:
        pending = [(e.prompt, list(e.experts[:experts])) for e in examples]
        for start in range(0, len(pending), CHUNK_EXAMPLES):
            pool.submit(_rl_chunk, None, pending[start : start + CHUNK_EXAMPLES])
            for _, chunk in pool.ready():
                yield from _rl_results(chunk)
        for _, chunk in pool.ready(drain=True):
            yield from _rl_results(chunk)


def _rl_results(chunk: _RLChunk) -> Iterator[tuple[list[int], list[list[int]]]]:
    prompt_bounds, expert_bounds = chunk.prompt_offsets.tolist(), chunk.expert_offsets.tolist()
    expert = 0
    for i, count in enumerate(chunk.expert_counts.tolist()):
        trajectories = [chunk.expert_ids[expert_bounds[j] : expert_bounds[j + 1]].tolist() for j in range(expert, expert + count)]
        expert += count
        yield chunk.prompt_ids[prompt_bounds[i] : prompt_bounds[i + 1]].tolist(), trajectories
    if chunk.error is not None:
        raise _rebuild(chunk.error)


# --------------------------------------------------------------------------------------------
# the workers


_WORKER_TOKENIZER: Any = None


def _init_worker(tokenizer: Any) -> None:
    global _WORKER_TOKENIZER
    _WORKER_TOKENIZER = tokenizer


@dataclass
class _Chunk:
    """A chunk's kept examples as flat arrays; ``kept`` are their positions in the chunk."""

    input_ids: np.ndarray
    loss_mask: np.ndarray
    offsets: np.ndarray
    kept: list[int]
    too_long: list[tuple[int, int]]  # (position, length), not kept
    error: tuple[int, tuple] | None  # (position, portable error): the chunk stops there


def _sft_chunk(examples: list[SFTExample], max_length: int, truncate: bool, stop_at_too_long: bool, tokenizer: Any = None) -> _Chunk:
    from npu_retu.data.tokenize import tokenize_sft

    tokenizer = tokenizer if tokenizer is not None else _WORKER_TOKENIZER
    ids, mask, offsets = array.array("i"), array.array("b"), [0]
    kept, too_long, error = [], [], None
    for position, example in enumerate(examples):
        try:
            tokenized = tokenize_sft(example, tokenizer, sys.maxsize)  # the length limit is applied below
        except (ChatTemplateError, DataError) as e:
            error = (position, _portable(e))
            break
        length = len(tokenized.input_ids)
        if length > max_length and not truncate:
            too_long.append((position, length))
            if stop_at_too_long:
                break
            continue
        ids.extend(tokenized.input_ids[:max_length])
        mask.extend(tokenized.loss_mask[:max_length])
        offsets.append(len(ids))
        kept.append(position)
    return _Chunk(np.frombuffer(ids, np.int32) if ids else np.zeros(0, np.int32), np.frombuffer(mask, np.int8) if mask else np.zeros(0, np.int8),
                  np.asarray(offsets, np.int64), kept, too_long, error)


@dataclass
class _RLChunk:
    prompt_ids: np.ndarray
    prompt_offsets: np.ndarray
    expert_ids: np.ndarray
    expert_offsets: np.ndarray
    expert_counts: np.ndarray
    error: tuple | None  # the portable error of the example after the last one here


def _rl_chunk(items: list[tuple[list[dict[str, str]], list[str]]], tokenizer: Any = None) -> _RLChunk:
    from npu_retu.data.tokenize import tokenize_expert, tokenize_prompt

    tokenizer = tokenizer if tokenizer is not None else _WORKER_TOKENIZER
    prompt_ids, prompt_offsets = array.array("i"), [0]
    expert_ids, expert_offsets, counts, error = array.array("i"), [0], [], None
    for prompt, texts in items:
        try:
            ids = tokenize_prompt(prompt, tokenizer)
            trajectories = [tokenize_expert(prompt, text, tokenizer) for text in texts]
        except (ChatTemplateError, DataError) as e:
            error = _portable(e)
            break
        prompt_ids.extend(ids)
        prompt_offsets.append(len(prompt_ids))
        for trajectory in trajectories:
            expert_ids.extend(trajectory)
            expert_offsets.append(len(expert_ids))
        counts.append(len(trajectories))

    def flat(values: array.array) -> np.ndarray:
        return np.frombuffer(values, np.int32) if values else np.zeros(0, np.int32)

    return _RLChunk(flat(prompt_ids), np.asarray(prompt_offsets, np.int64), flat(expert_ids), np.asarray(expert_offsets, np.int64),
                    np.asarray(counts, np.int64), error)


def _portable(error: Exception) -> tuple:
    """An error as plain values (DataError's constructor takes keywords that pickle does not keep)."""
    if isinstance(error, DataError):
        return ("data", error.file, error.message, error.row, error.field, error.reason)
    return ("template", str(error))


def _rebuild(portable: tuple) -> Exception:
    if portable[0] == "data":
        _, file, message, row, field_name, reason = portable
        return DataError(file, message, row=row, field=field_name, reason=reason)
    return ChatTemplateError(portable[1])


class _Workers:
    """Tasks done in order: by ``num_workers`` spawned processes (started on the first task), at
    most two per worker in flight, or right away in this process when ``num_workers`` is 0."""

    def __init__(self, num_workers: int, tokenizer: Any) -> None:
        self.num_workers, self.tokenizer = num_workers, tokenizer
        self.pool: ProcessPoolExecutor | None = None
        self.pending: deque[tuple[Any, Any]] = deque()

    def __enter__(self) -> _Workers:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, fn: Any, tag: Any, *args: Any) -> None:
        if not self.num_workers:
            self.pending.append((tag, fn(*args, tokenizer=self.tokenizer)))
            return
        if self.pool is None:
            import multiprocessing

            self.pool = ProcessPoolExecutor(self.num_workers, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_init_worker, initargs=(self.tokenizer,))
        self.pending.append((tag, self.pool.submit(fn, *args)))

    def ready(self, *, drain: bool = False) -> Iterator[tuple[Any, Any]]:
        """``(tag, result)`` of the oldest tasks that are done (waiting while too many are in flight;
        with ``drain``, for all of them)."""
        limit = 0 if drain else 2 * self.num_workers
        while self.pending and (len(self.pending) > limit or not isinstance(self.pending[0][1], Future) or self.pending[0][1].done()):
            tag, item = self.pending.popleft()
            if isinstance(item, Future):
                try:
                    item = item.result()
                except BrokenProcessPool:
                    raise EnvironmentFault(
                        "a tokenization worker process died (out of memory? its error, if any, is printed above); lower "
                        "data.num_workers, or set it to 0 to tokenize in the training process"
                    ) from None
            yield tag, item
