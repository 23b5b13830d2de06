"""The on-disk activation cache: shards plus a manifest, written atomically, resumable.

Layout of one cache (its folder name is a hash of the source's fingerprint)::

    <root>/<fingerprint-hash>/
        manifest.json               fingerprint, d_in, n_ctx, dtype, shards with sha256, complete flag
        shard_00000.x.npy           [n, n_ctx, d_in] activations (memory-mapped when training)
        shard_00000.tokens.npy      [n, n_ctx] int32 token ids (to show features on text later)
        shard_00000.doc_start.npy   [n, n_ctx] bool document starts
        shard_00000.language.npy    [n, n_ctx] int16 region labels (only for labelled text, e.g. the
        shard_00000.kind.npy        [n, n_ctx] int16   Debian Reference: ctxsae.data.windows.TokenLabels;
        shard_00000.block.npy       [n, n_ctx] int32   the names of the codes are in the manifest)

Every file is written to a temporary name and renamed into place, and the manifest is
rewritten (atomically) after each shard, so a killed extraction loses at most the shard in
flight and resumes after the last complete one. A fingerprint mismatch is an error that names
the fix, never silent reuse. A shard whose file is missing or whose checksum does not match is
re-extracted by itself from the source (windows are deterministic), and an unreadable manifest
starts the cache afresh, each with a warning naming what was damaged. A file lock lets the jobs
of a sweep share one cache: the first extracts, the others wait and reuse it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock

from ctxsae.data.source import ActivationChunk, ActivationSource, JointSource
from ctxsae.data.windows import TokenLabels
from ctxsae.errors import Notice, UserError
from ctxsae.ranges import at_least

FORMAT_VERSION = 1
LABEL_ARRAYS = {"language": np.int16, "kind": np.int16, "block": np.int32}  # TokenLabels' tensors, by name


@dataclass
class CacheConfig:
    root: str = "~/.cache/ctxsae/activations"  # one sub-folder per fingerprint
    dtype: str = "float16"  # storage dtype of activations (float16 halves disk and read bandwidth)
    shard_windows: int = field(default=256, metadata=at_least(1))  # windows per shard: the unit of atomic writes and resume
    verify: bool = True  # check every shard's sha256 when opening (about 1 s per GB); a damaged shard is re-extracted


def fingerprint_hash(fingerprint: dict) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


class ActivationCache:
    """A complete, verified cache, opened read-only with memory-mapped activations."""

    def __init__(self, folder: Path, manifest: dict):
        self.folder, self.manifest = folder, manifest
        self.d_in, self.n_ctx = manifest["d_in"], manifest["n_ctx"]
        shards = manifest["shards"]
        self.x = [np.load(folder / f"{s['name']}.x.npy", mmap_mode="r") for s in shards]
        # Token ids and document starts are small: keep them in memory.
        self.tokens = np.concatenate([np.load(folder / f"{s['name']}.tokens.npy") for s in shards])
        self.doc_start = np.concatenate([np.load(folder / f"{s['name']}.doc_start.npy") for s in shards])
        self.shard_offsets = np.cumsum([0] + [s["n_windows"] for s in shards])
        self.labels: TokenLabels | None = None
        if "labels" in manifest:
            language, kind, block = (np.concatenate([np.load(folder / f"{s['name']}.{k}.npy") for s in shards]) for k in LABEL_ARRAYS)
            names = manifest["labels"]
            self.labels = TokenLabels(*map(torch.from_numpy, (language, kind, block)), tuple(names["languages"]), tuple(names["kinds"]))

    @property
    def n_windows(self) -> int:
        return int(self.shard_offsets[-1])

    def read_x(self, indices: np.ndarray) -> np.ndarray:
        """Activations of the given windows [n, n_ctx, d_in] in the storage dtype, in the given order."""
        shard = np.searchsorted(self.shard_offsets, indices, side="right") - 1
        out = np.empty((len(indices), self.n_ctx, self.d_in), dtype=self.x[0].dtype)
        for s in np.unique(shard):
            sel = np.nonzero(shard == s)[0]
            local = indices[sel] - self.shard_offsets[s]
            order = np.argsort(local)  # sorted reads are sequential on disk
            out[sel[order]] = self.x[s][local[order]]
        return out


def open_or_build(source: ActivationSource, cfg: CacheConfig, progress: bool = True, verify: bool | None = None) -> ActivationCache:
    """Open the cache for ``source``, extracting (or finishing an interrupted extraction) first if needed."""
    return open_or_build_joint(_Alone(source), cfg, progress, verify)[0]


class _Alone:
    """One source as a JointSource of one part."""

    def __init__(self, source: ActivationSource):
        self.parts, self.source = [source], source

    def n_windows(self) -> int:
        return self.source.n_windows()

    def joint_chunks(self, start: int, chunk_windows: int) -> Iterator[list[ActivationChunk]]:
        return ([chunk] for chunk in self.source.chunks(start, chunk_windows))


def open_or_build_joint(source: JointSource, cfg: CacheConfig, progress: bool = True, verify: bool | None = None) -> list[ActivationCache]:
    """Open one cache per part of ``source`` (each keyed as if its part were extracted alone), filling
    the incomplete ones in one pass (e.g. one LM forward for the hooks at several layers).

    A part's cache that is complete is left untouched; the pass starts at the earliest window any
    incomplete part lacks, and each shard is written only to the parts that lack it. Damaged shards
    (a missing file always; a checksum mismatch when ``verify``, default ``cfg.verify``) are
    re-extracted.
    """
    folders, fingerprints = [], []
    for part in source.parts:
        fingerprints.append({"format": FORMAT_VERSION, "dtype": cfg.dtype, "source": part.fingerprint()})
        folders.append(Path(cfg.root).expanduser() / fingerprint_hash(fingerprints[-1]))
        folders[-1].mkdir(parents=True, exist_ok=True)
    checksums = cfg.verify if verify is None else verify
    with _locked(folders):
        manifests = [_read_manifest(folder, fp) for folder, fp in zip(folders, fingerprints)]
        if not all(m["complete"] for m in manifests):
            manifests = _extract(source, cfg, folders, manifests, progress)
    # Verified outside the lock (jobs of a sweep hash at once); a repair takes it and looks again,
    # since another job may have repaired the same shards meanwhile.
    if any(_damaged(folder, manifest, checksums) for folder, manifest in zip(folders, manifests)):
        with _locked(folders):
            manifests = [_read_manifest(folder, fp) for folder, fp in zip(folders, fingerprints)]
            _repair(source, cfg, folders, manifests, [_damaged(f, m, checksums) for f, m in zip(folders, manifests)])
    return [ActivationCache(folder, manifest) for folder, manifest in zip(folders, manifests)]


@contextmanager
def _locked(folders: list[Path]) -> Iterator[None]:
    """Hold the file locks of ``folders``. A crashed holder's OS-level lock is released with its process, so
    the rest never deadlock; locks are taken in one global order (by folder) so two joint extractions never
    wait on each other."""
    with ExitStack() as locks:
        for folder in sorted(set(folders)):
            locks.enter_context(FileLock(str(folder / ".lock")))
        yield


def _read_manifest(folder: Path, fingerprint: dict) -> dict:
    path = folder / "manifest.json"
    if not path.exists():
        return {"fingerprint": fingerprint, "shards": [], "complete": False}
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        warnings.warn(f"activation cache manifest {path} is corrupt ({e}): extracting the cache afresh", Notice)
        return {"fingerprint": fingerprint, "shards": [], "complete": False}
    if manifest.get("fingerprint") != fingerprint:
        raise UserError(f"activation cache {folder} was built for different settings: delete {folder} and rerun to re-extract")
    return manifest


def _extract(source: JointSource, cfg: CacheConfig, folders: list[Path], manifests: list[dict], progress: bool) -> list[dict]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    for folder in folders:
        for stale in folder.glob("*.tmp"):  # the shard in flight when a previous run was killed
            stale.unlink()
    filling = [not m["complete"] for m in manifests]
    done = [sum(s["n_windows"] for s in m["shards"]) for m in manifests]
    start = min(d for d, fill in zip(done, filling) if fill)
    total = source.n_windows()
    if total == 0:
        raise UserError("the data source produced no windows: add text, or lower data.n_ctx")
    for part, manifest, fill in zip(source.parts, manifests, filling):
        if fill:
            manifest |= {"d_in": part.d_in, "n_ctx": part.n_ctx, "dtype": cfg.dtype}
    n_ctx = source.parts[0].n_ctx
    columns = [TextColumn("extracting activations"), BarColumn(), MofNCompleteColumn(), TextColumn("windows"),
               TextColumn("{task.fields[tok_s]:>7.0f} tok/s"), TimeRemainingColumn()]
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("extract", total=total, completed=start, tok_s=0.0)
        t0, position, rate = time.perf_counter(), start, 0.0
        for chunks in source.joint_chunks(start, cfg.shard_windows):
            for i, (chunk, folder, manifest) in enumerate(zip(chunks, folders, manifests)):
                if done[i] == position:  # this part lacks the shard (shards of all parts are aligned)
                    done[i] += len(chunk.x_NTD)
                    manifest["complete"] = done[i] >= total
                    _write_shard(chunk, cfg.dtype, folder, manifest, len(manifest["shards"]))
            position += len(chunks[0].x_NTD)
            rate = (position - start) * n_ctx / (time.perf_counter() - t0)
            bar.update(task, completed=position, tok_s=rate)
    for folder, manifest, fill in zip(folders, manifests, filling):
        if fill:  # the pass's rate (all its hooks at once)
            manifest["extract_tokens_per_s"] = rate
            atomic_write_bytes(folder / "manifest.json", json.dumps(manifest, indent=1).encode())
    return manifests


def _write_shard(chunk: ActivationChunk, dtype: str, folder: Path, manifest: dict, index: int) -> None:
    """Shard ``index`` of one cache (the next one, or a repaired one), then its manifest: each file
    atomically, the manifest last."""
    name = f"shard_{index:05d}"
    arrays = _shard_arrays(chunk, dtype, manifest)
    if not np.isfinite(arrays["x"]).all():
        raise UserError(f"non-finite activations in {name} (overflow in cache.dtype={dtype}?): use cache.dtype=float32")
    sums = {}
    for key, array in arrays.items():
        path = folder / f"{name}.{key}.npy"
        _atomic_save_npy(path, array)
        sums[key] = _sha256(path)
    manifest["shards"][index : index + 1] = [{"name": name, "n_windows": len(chunk.x_NTD), "sha256": sums}]
    atomic_write_bytes(folder / "manifest.json", json.dumps(manifest, indent=1).encode())


def _shard_arrays(chunk: ActivationChunk, dtype: str, manifest: dict) -> dict[str, np.ndarray]:
    """The arrays of one shard, by file key; label names go into the manifest with the first shard."""
    arrays = {
        "x": chunk.x_NTD.numpy().astype(dtype),
        "tokens": chunk.tokens_NT.numpy().astype(np.int32),
        "doc_start": chunk.doc_start_NT.numpy().astype(bool),
    }
    if chunk.labels is not None:
        names = {"languages": list(chunk.labels.languages), "kinds": list(chunk.labels.kinds)}
        if manifest.setdefault("labels", names) != names:  # one vocabulary per cache (the text is fixed by the key)
            raise UserError(f"region label names changed between shards ({manifest['labels']} vs {names}): delete the cache and rerun")
        tensors = (chunk.labels.language_NT, chunk.labels.kind_NT, chunk.labels.block_NT)
        arrays |= {key: t.numpy().astype(dt) for (key, dt), t in zip(LABEL_ARRAYS.items(), tensors)}
    return arrays


def _damaged(folder: Path, manifest: dict, checksums: bool) -> dict[int, list[str]]:
    """The shards of a complete cache with a missing file (or, with ``checksums``, a sha256 mismatch): their
    index -> what is wrong with which files."""
    damaged = {}
    for index, shard in enumerate(manifest["shards"]):
        for key, want in shard["sha256"].items():  # the arrays the shard was written with (labels only where the text has them)
            path = folder / f"{shard['name']}.{key}.npy"
            if not path.exists():
                damaged.setdefault(index, []).append(f"{path.name} is missing")
            elif checksums and _sha256(path) != want:
                damaged.setdefault(index, []).append(f"{path.name} is corrupt (checksum mismatch)")
    return damaged


def _repair(source: JointSource, cfg: CacheConfig, folders: list[Path], manifests: list[dict],
            damaged: list[dict[int, list[str]]]) -> None:
    """Re-extract the ``damaged`` shards of each part's cache, each from its own windows of the source, and
    rewrite them (and their checksums in the manifest). Parts whose shards cover the same windows share a pass."""
    wanted: dict[tuple[int, int], list[tuple[int, int]]] = {}  # (first window, windows) -> (part, shard index)
    for part, (folder, manifest, bad) in enumerate(zip(folders, manifests, damaged)):
        offsets = np.cumsum([0] + [s["n_windows"] for s in manifest["shards"]])
        for index, files in bad.items():
            lo, hi = int(offsets[index]), int(offsets[index + 1])
            warnings.warn(f"activation cache {folder}: {', '.join(files)}: re-extracting the shard's windows "
                          f"{lo}-{hi - 1} from the source", Notice)
            wanted.setdefault((lo, hi - lo), []).append((part, index))
    for (start, n), targets in wanted.items():
        chunks = next(iter(source.joint_chunks(start, n)))  # the shard's own windows, in the batches first used
        for part, index in targets:
            _write_shard(chunks[part], cfg.dtype, folders[part], manifests[part], index)
