import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ctxsae.cache.dataset import CachedWindows
from ctxsae.data.source import ActivationChunk
from ctxsae.cache.store import CacheConfig, open_or_build
from ctxsae.data.debian_reference import BLOCK_KINDS
from ctxsae.data.windows import TokenLabels
from ctxsae.errors import Notice, UserError


class FakeSource:
    """Deterministic activations; can be told to die after some chunks, like a killed extraction."""

    d_in, n_ctx = 8, 6

    def __init__(self, n=50, die_after=None, tag="a"):
        self.n, self.die_after, self.tag, self.starts = n, die_after, tag, []
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, self.n_ctx, self.d_in, generator=g)
        self.tokens = torch.arange(n * self.n_ctx, dtype=torch.int32).reshape(n, self.n_ctx)
        self.doc_start = torch.rand(n, self.n_ctx, generator=g) < 0.2
        self.doc_start[:, 0] = True

    def fingerprint(self):
        return {"fake": self.tag, "n": self.n}

    def n_windows(self):
        return self.n

    def chunks(self, start, chunk_windows):
        self.starts.append(start)
        for i, lo in enumerate(range(start, self.n, chunk_windows)):
            if self.die_after is not None and i == self.die_after:
                raise KeyboardInterrupt("killed")
            hi = min(lo + chunk_windows, self.n)
            yield ActivationChunk(self.x[lo:hi], self.tokens[lo:hi], self.doc_start[lo:hi])


@pytest.fixture
def cfg(tmp_path):
    return CacheConfig(root=str(tmp_path / "cache"), dtype="float32", shard_windows=16)


def test_round_trip_keeps_every_window_in_order(cfg):
    src = FakeSource()
    cache = open_or_build(src, cfg, progress=False)
    assert cache.n_windows == 50 and len(cache.x) == 4  # 16 + 16 + 16 + 2
    idx = np.array([49, 0, 17, 16, 3, 33])  # across shards, unsorted
    np.testing.assert_array_equal(cache.read_x(idx), src.x[idx].numpy())
    np.testing.assert_array_equal(cache.tokens, src.tokens.numpy())
    np.testing.assert_array_equal(cache.doc_start, src.doc_start.numpy())
    # A second open reuses the cache without extracting again.
    again = FakeSource()
    open_or_build(again, cfg, progress=False)
    assert again.starts == []


def test_float16_storage_halves_precision_not_content(cfg):
    cfg.dtype = "float16"
    src = FakeSource()
    cache = open_or_build(src, cfg, progress=False)
    assert cache.x[0].dtype == np.float16
    np.testing.assert_array_equal(cache.read_x(np.arange(50)), src.x.numpy().astype(np.float16))


def test_killed_extraction_resumes_after_last_complete_shard(cfg):
    with pytest.raises(KeyboardInterrupt):
        open_or_build(FakeSource(die_after=2), cfg, progress=False)
    folder = next(Path(cfg.root).iterdir())
    manifest = json.loads((folder / "manifest.json").read_text())
    assert [s["n_windows"] for s in manifest["shards"]] == [16, 16] and not manifest["complete"]
    (folder / "shard_00002.x.npy.tmp").write_bytes(b"half a shard")  # what a kill mid-write leaves

    resumed = FakeSource()
    cache = open_or_build(resumed, cfg, progress=False)
    assert resumed.starts == [32]  # only the missing windows are extracted
    assert not list(folder.glob("*.tmp"))
    np.testing.assert_array_equal(cache.read_x(np.arange(50)), resumed.x.numpy())


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def shard_arrays(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.load(p) for p in sorted(folder.glob("shard_*.npy"))}


def test_corrupt_and_missing_shards_are_re_extracted_alone_with_a_warning_naming_them(cfg):
    cache = open_or_build(FakeSource(), cfg, progress=False)
    original, manifest = shard_arrays(cache.folder), (cache.folder / "manifest.json").read_text()
    flip_a_byte(cache.folder / "shard_00001.x.npy")
    (cache.folder / "shard_00003.doc_start.npy").unlink()

    src = FakeSource()
    with pytest.warns(Notice) as caught:
        repaired = open_or_build(src, cfg, progress=False)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2
    assert "shard_00001.x.npy is corrupt (checksum mismatch)" in messages[0] and "windows 16-31" in messages[0]
    assert "shard_00003.doc_start.npy is missing" in messages[1] and "windows 48-49" in messages[1]
    assert src.starts == [16, 48]  # each damaged shard's windows, nothing else
    got = shard_arrays(repaired.folder)
    assert got.keys() == original.keys()
    for name, array in original.items():
        np.testing.assert_array_equal(got[name], array, err_msg=name)
    assert (repaired.folder / "manifest.json").read_text() == manifest  # the same checksums: bit for bit
    np.testing.assert_array_equal(repaired.read_x(np.arange(50)), src.x.numpy())


def test_a_missing_shard_is_re_extracted_even_without_checksum_verification(cfg):
    cache = open_or_build(FakeSource(), cfg, progress=False)
    (cache.folder / "shard_00000.tokens.npy").unlink()
    with pytest.warns(Notice, match="shard_00000.tokens.npy is missing"):
        reopened = open_or_build(FakeSource(), cfg, progress=False, verify=False)
    np.testing.assert_array_equal(reopened.tokens, FakeSource().tokens.numpy())


def test_corrupt_manifest_is_rebuilt_from_scratch_with_a_warning(cfg):
    cache = open_or_build(FakeSource(), cfg, progress=False)
    original = shard_arrays(cache.folder)
    (cache.folder / "manifest.json").write_text('{"fingerprint": {"form')
    src = FakeSource()
    with pytest.warns(Notice, match="manifest .*manifest.json is corrupt"):
        rebuilt = open_or_build(src, cfg, progress=False)
    assert src.starts == [0]
    got = shard_arrays(rebuilt.folder)
    for name, array in original.items():
        np.testing.assert_array_equal(got[name], array, err_msg=name)


def test_manifest_for_other_settings_is_never_reused(cfg):
    cache = open_or_build(FakeSource(), cfg, progress=False)
    manifest = json.loads((cache.folder / "manifest.json").read_text())
    manifest["fingerprint"]["source"]["n"] = 999
    (cache.folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="different settings"):
        open_or_build(FakeSource(), cfg, progress=False)


def test_different_sources_get_different_caches(cfg):
    a = open_or_build(FakeSource(tag="a"), cfg, progress=False)
    b = open_or_build(FakeSource(tag="b"), cfg, progress=False)
    assert a.folder != b.folder


class LabelledSource(FakeSource):
    """FakeSource whose text has region labels (as the Debian Reference has)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        g = torch.Generator().manual_seed(1)
        shape = (self.n, self.n_ctx)
        self.labels = TokenLabels(
            torch.randint(-1, 2, shape, generator=g).short(), torch.randint(-1, 6, shape, generator=g).short(),
            torch.randint(-1, 40, shape, generator=g).int(), ("de", "en"), BLOCK_KINDS,
        )

    def fingerprint(self):
        return super().fingerprint() | {"labelled": True}

    def chunks(self, start, chunk_windows):
        for chunk in super().chunks(start, chunk_windows):
            lo = int(chunk.tokens_NT[0, 0]) // self.n_ctx  # tokens are arange: the first says which window
            yield chunk._replace(labels=self.labels.select(slice(lo, lo + len(chunk.tokens_NT))))


def test_region_labels_are_stored_beside_the_tokens_and_reach_the_batches(cfg):
    src = LabelledSource()
    cache = open_or_build(src, cfg, progress=False)
    for got, want in zip(cache.labels, src.labels):
        assert torch.equal(got, want) if isinstance(want, torch.Tensor) else got == want
    batch = CachedWindows(cache, np.arange(50), 1.0, 1).__getitems__([7, 3])
    assert torch.equal(batch.labels.kind_NT, src.labels.kind_NT[[7, 3]]) and batch.labels.kinds == BLOCK_KINDS
    # The labels are checksummed and repaired like the rest; unlabelled sources store none.
    flip_a_byte(cache.folder / "shard_00002.kind.npy")
    with pytest.warns(Notice, match="shard_00002.kind.npy is corrupt"):
        repaired = open_or_build(LabelledSource(), cfg, progress=False)
    assert torch.equal(repaired.labels.kind_NT, src.labels.kind_NT)
    plain = open_or_build(FakeSource(), cfg, progress=False)
    assert plain.labels is None and not list(plain.folder.glob("*.kind.npy"))
    assert CachedWindows(plain, np.arange(50), 1.0, 1).__getitems__([0]).labels is None
