"""A cache of tokenized data files, reused across runs: one Arrow file per data file (per shard).

    cache = TokenCache.open(cfg.data.cache_dir)                  # None: the default folder
    key = cache.key(file, tokenizer_fingerprint(tokenizer), max_length=4096, truncate=False)
    entry = cache.load(key)                                      # None when absent or unreadable
    cache.save(key, entry)

**Where**: ``data.cache_dir``, by default ``$NPU_RETU_CACHE/tokenized`` (``~/.cache/npu-retu/tokenized``
when the variable is unset), never beside the data. Delete the folder to clear it; nothing else
points into it.

**Keyed by** (a SHA-256 over all of these): the tokenizer's content (its serialized vocabulary,
merges, normalizer and added tokens, its class, the special-token ids), the chat template,
``max_length`` and whether rows are truncated, the data file's identity (resolved path, size,
modification time in ns and a hash of its first and last MiB), the source of the modules that turn
rows into tokens (readers, schemas, tokenize: an edit to them is a new key) and the format version.
The versions of transformers and tokenizers are part of the tokenizer's key.

**Safe against a kill**: an entry is written to ``.tmp-<name>-<pid>-<random>`` in the cache folder,
flushed to disk, then renamed over its final name (``os.replace``), so a reader sees a whole entry
or none; ``.tmp-*`` files a killed run left behind are never read and are removed after an hour.
An entry that cannot be read (a disk error) is a miss: it is tokenized again and rewritten.

An entry holds the kept examples (row, token ids as int32, loss mask as int8) and, in its schema
metadata, the number of rows read, the rows skipped while reading (with their field, reason and
message) and the rows longer than ``max_length`` (with their length), so that a run that reads
it counts and reports exactly what a run that tokenized the file did.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
METADATA_KEY = b"npu_retu"
STALE_TMP_S = 3600.0
_HASHED_EDGE_BYTES = 1 << 20
# the modules whose code decides what a data file tokenizes to
_CODE_FILES = ("readers.py", "schemas.py", "errors.py", "tokenize.py", "token_cache.py")


def default_cache_dir() -> Path:
    """``$NPU_RETU_CACHE/tokenized``, by default ``~/.cache/npu-retu/tokenized``."""
    base = os.environ.get("NPU_RETU_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "npu-retu")
    return Path(base) / "tokenized"


def tokenizer_fingerprint(tokenizer: Any) -> str | None:
    """A hash of everything about ``tokenizer`` that decides the ids it gives and the loss mask:
    its serialized fast tokenizer (vocabulary, merges, normalizer, pre-tokenizer, added tokens), its
    class, its special-token ids and the library versions. A slow tokenizer (no ``backend_tokenizer``)
    is hashed by the files of its folder (``name_or_path``); None when neither is available."""
    import tokenizers
    import transformers

    from npu_retu.data.tokenize import special_token_ids

    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode("utf-8"))
    else:
        folder = Path(str(getattr(tokenizer, "name_or_path", "") or ""))
        if not folder.is_dir():
            return None
        for file in sorted(p for p in folder.iterdir() if p.is_file()):
            digest.update(file.name.encode("utf-8") + b"\0" + file.read_bytes() + b"\0")
    facts = {
        "class": type(tokenizer).__name__,
        "special_ids": sorted(special_token_ids(tokenizer)),
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
    }
    digest.update(json.dumps(facts, sort_keys=True).encode("utf-8"))
    return digest.hexdigest()


def file_identity(file: str | Path) -> dict[str, Any]:
    """What tells one version of a data file from another without reading all of it."""
    path = Path(file).resolve()
    stat = path.stat()
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        digest.update(handle.read(_HASHED_EDGE_BYTES))
        if stat.st_size > _HASHED_EDGE_BYTES:
            handle.seek(max(_HASHED_EDGE_BYTES, stat.st_size - _HASHED_EDGE_BYTES))
            digest.update(handle.read())
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "edges_sha256": digest.hexdigest()}


@functools.lru_cache(maxsize=1)
def _code_hash() -> str:
    digest = hashlib.sha256()
    folder = Path(__file__).parent
    for name in _CODE_FILES:
        digest.update((folder / name).read_bytes())
    return digest.hexdigest()


@dataclass
class CacheEntry:
    """One tokenized data file.

    ``rows``: rows read (what :class:`~npu_retu.data.errors.BadRowCounter` counts); ``skipped``: the
    rows skipped while reading, as ``{"row", "field", "reason", "message"}``; ``too_long``: ``(row,
    length)`` of the rows longer than ``max_length`` (not kept); the kept examples are ``example_rows``
    with their ids and masks as flat arrays cut at ``offsets`` (``len(example_rows) + 1`` of them).
    """

    rows: int
    skipped: list[dict[str, Any]]
    too_long: list[tuple[int, int]]
    example_rows: np.ndarray  # int64
    offsets: np.ndarray  # int64
    input_ids: np.ndarray  # int32
    loss_mask: np.ndarray  # int8
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.example_rows)


@dataclass
class TokenCache:
    folder: Path

    @classmethod
    def open(cls, folder: str | Path | None = None) -> TokenCache:
        return cls(Path(folder).expanduser() if folder else default_cache_dir())

    def key(self, file: str | Path, tokenizer_hash: str, *, chat_template: str | None, max_length: int, truncate: bool,
            kind: str = "sft") -> str:
        facts = {
            "format": FORMAT_VERSION, "kind": kind, "file": file_identity(file), "tokenizer": tokenizer_hash,
            "chat_template": chat_template, "max_length": max_length, "truncate": truncate, "code": _code_hash(),
        }
        return f"{kind}-" + hashlib.sha256(json.dumps(facts, sort_keys=True).encode("utf-8")).hexdigest()

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.arrow"

    def load(self, key: str) -> CacheEntry | None:
        """The entry stored under ``key``; None when there is none, or it cannot be read (then it is
        logged, and the caller tokenizes the file again and overwrites it)."""
        import pyarrow as pa

        path = self.path(key)
        if not path.is_file():
            return None
        try:
            table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
            meta = json.loads(table.schema.metadata[METADATA_KEY])
            if meta.get("format") != FORMAT_VERSION or meta.get("key") != key:
                raise ValueError(f"entry is for key {meta.get('key')!r}, format {meta.get('format')!r}")
            ids = table.column("input_ids").combine_chunks()
            mask = table.column("loss_mask").combine_chunks()
            entry = CacheEntry(
                rows=int(meta["rows"]), skipped=list(meta["skipped"]), too_long=[(int(r), int(n)) for r, n in meta["too_long"]],
                example_rows=table.column("row").to_numpy(), offsets=ids.offsets.to_numpy(),
                input_ids=ids.values.to_numpy(), loss_mask=mask.values.to_numpy(), meta=meta,
            )
            if len(entry.offsets) != len(entry) + 1 or not np.array_equal(entry.offsets, mask.offsets.to_numpy()):
                raise ValueError("ids and masks do not line up")
        except Exception as e:  # an unreadable entry is a miss, never a failed run
            logger.warning("tokenized-data cache: cannot read %s (%s); tokenizing again", path, " ".join(str(e).split()))
            return None
        return entry

    def save(self, key: str, entry: CacheEntry, *, file: str) -> Path | None:
        """Write ``entry`` under ``key`` atomically; a failure (disk full, read-only folder) is logged
        and leaves no file behind: the run goes on without the cache."""
        import pyarrow as pa

        path = self.path(key)
        tmp = self.folder / f".tmp-{path.name}-{os.getpid()}-{secrets.token_hex(4)}"
        meta = {"format": FORMAT_VERSION, "key": key, "file": file, "rows": entry.rows, "examples": len(entry),
                "tokens": int(len(entry.input_ids)), "skipped": entry.skipped, "too_long": [list(t) for t in entry.too_long],
                "written": time.strftime("%Y-%m-%d %H:%M:%S")}
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._remove_stale_tmp()
            offsets = pa.array(entry.offsets, pa.int64())
            table = pa.table({
                "row": pa.array(entry.example_rows, pa.int64()),
                "input_ids": pa.LargeListArray.from_arrays(offsets, pa.array(entry.input_ids, pa.int32())),
                "loss_mask": pa.LargeListArray.from_arrays(offsets, pa.array(entry.loss_mask, pa.int8())),
            }).replace_schema_metadata({METADATA_KEY: json.dumps(meta)})
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except Exception as e:
            tmp.unlink(missing_ok=True)
            logger.warning("tokenized-data cache: cannot write %s (%s); going on without it", path, " ".join(str(e).split()))
            return None
        return path

    def _remove_stale_tmp(self) -> None:
        now = time.time()
        for tmp in self.folder.glob(".tmp-*"):
            try:
                if now - tmp.stat().st_mtime > STALE_TMP_S:
                    tmp.unlink()
            except OSError:
                pass  # another process removed or renamed it
