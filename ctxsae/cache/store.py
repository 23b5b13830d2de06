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
flight and resumes after the last complete one. A fingerprint or checksum mismatch is an error
that names the fix, never silent reuse. A file lock lets the jobs of a sweep share one cache:
the first extracts, the others wait and reuse it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock

from ctxsae.data.source import ActivationChunk, ActivationSource, JointSource
from ctxsae.data.windows import TokenLabels
from ctxsae.errors import UserError
from ctxsae.ranges import at_least

FORMAT_VERSION = 1
LABEL_ARRAYS = {"language": np.int16, "kind": np.int16, "block": np.int32}  # TokenLabels' tensors, by name


@dataclass
class CacheConfig:
    root: str = "~/.cache/ctxsae/activations"  # one sub-folder per fingerprint
    dtype: str = "float16"  # storage dtype of activations (float16 halves disk and read bandwidth)
    shard_windows: int = field(default=256, metadata=at_least(1))  # windows per shard: the unit of atomic writes and resume
    verify: bool = True  # check every shard's sha256 when opening (about 1 s per GB)


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
    incomplete part lacks, and each shard is written only to the parts that lack it.
    """
    folders, fingerprints = [], []
    for part in source.parts:
        fingerprints.append({"format": FORMAT_VERSION, "dtype": cfg.dtype, "source": part.fingerprint()})
        folders.append(Path(cfg.root).expanduser() / fingerprint_hash(fingerprints[-1]))
        folders[-1].mkdir(parents=True, exist_ok=True)
    # A crashed holder's OS-level lock is released with its process, so the rest never deadlock;
    # locks are taken in one global order (by folder) so two joint extractions never wait on each other.
    with ExitStack() as locks:
        for folder in sorted(set(folders)):
            locks.enter_context(FileLock(str(folder / ".lock")))
        manifests = [_read_manifest(folder, fp) for folder, fp in zip(folders, fingerprints)]
        if not all(m["complete"] for m in manifests):
            manifests = _extract(source, cfg, folders, manifests, progress)
    for folder, manifest in zip(folders, manifests):
        if cfg.verify if verify is None else verify:
            _verify(folder, manifest)
    return [ActivationCache(folder, manifest) for folder, manifest in zip(folders, manifests)]


def _read_manifest(folder: Path, fingerprint: dict) -> dict:
    path = folder / "manifest.json"
    if not path.exists():
        return {"fingerprint": fingerprint, "shards": [], "complete": False}
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"activation cache manifest {path} is corrupt ({e}): delete {folder} and rerun to re-extract") from e
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
                    _write_shard(chunk, cfg, folder, manifest, done[i] + len(chunk.x_NTD) >= total)
                    done[i] += len(chunk.x_NTD)
            position += len(chunks[0].x_NTD)
            rate = (position - start) * n_ctx / (time.perf_counter() - t0)
            bar.update(task, completed=position, tok_s=rate)
    for folder, manifest, fill in zip(folders, manifests, filling):
        if fill:  # the pass's rate (all its hooks at once)
            manifest["extract_tokens_per_s"] = rate
            atomic_write_bytes(folder / "manifest.json", json.dumps(manifest, indent=1).encode())
    return manifests


def _write_shard(chunk: ActivationChunk, cfg: CacheConfig, folder: Path, manifest: dict, complete: bool) -> None:
    """The next shard of one cache, then its manifest: each file atomically, the manifest last."""
    name = f"shard_{len(manifest['shards']):05d}"
    arrays = _shard_arrays(chunk, cfg.dtype, manifest)
    if not np.isfinite(arrays["x"]).all():
        raise UserError(f"non-finite activations in {name} (overflow in cache.dtype={cfg.dtype}?): use cache.dtype=float32")
    sums = {}
    for key, array in arrays.items():
        path = folder / f"{name}.{key}.npy"
        _atomic_save_npy(path, array)
        sums[key] = _sha256(path)
    manifest["shards"].append({"name": name, "n_windows": len(chunk.x_NTD), "sha256": sums})
    manifest["complete"] = complete
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


def _verify(folder: Path, manifest: dict) -> None:
    for shard in manifest["shards"]:
        for key in shard["sha256"]:  # the arrays the shard was written with (labels only where the text has them)
            path = folder / f"{shard['name']}.{key}.npy"
            if not path.exists() or _sha256(path) != shard["sha256"][key]:
                raise UserError(
                    f"activation cache shard {path.name} is missing or corrupt (checksum mismatch): "
                    f"delete {folder} and rerun to re-extract"
                )
