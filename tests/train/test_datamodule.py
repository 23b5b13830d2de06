import numpy as np
import pytest
import torch

from ctxsae.cache.store import CacheConfig
from ctxsae.data.synthetic import SyntheticSource
from ctxsae.errors import UserError
from ctxsae.train.datamodule import ActivationDataModule, DataConfig


def make_dm(tmp_path, **data):
    source = SyntheticSource(d_in=16, n_windows=40, n_ctx=12, doc_len=5, seed=3)
    cfg = DataConfig(n_ctx=12, exclude_first=2, val_fraction=0.25, batch_windows=4, seed=0)
    for k, v in data.items():
        setattr(cfg, k, v)
    dm = ActivationDataModule(source, cfg, CacheConfig(root=str(tmp_path), dtype="float32", shard_windows=16))
    dm.prepare_data()
    dm.setup("fit")
    return dm, source


def test_batches_are_whole_windows_in_token_order_with_doc_starts_and_mask(tmp_path):
    dm, source = make_dm(tmp_path)
    chunk = next(source.chunks(0, 40))
    ds = dm.dataset("train")
    batch = ds.__getitems__([3, 0, 7])
    windows = dm.train_idx[[3, 0, 7]]
    torch.testing.assert_close(batch.x_BTD, chunk.x_NTD[windows] * dm.scale)
    assert torch.equal(batch.doc_start_BT, chunk.doc_start_NT[windows])
    assert batch.doc_start_BT[:, 0].all() and batch.doc_start_BT[:, 1:].any()  # interior document starts
    assert not batch.mask_BT[:, :2].any() and batch.mask_BT[:, 2:].all()


def test_split_is_disjoint_and_independent_of_training_seed(tmp_path):
    dm, _ = make_dm(tmp_path)
    assert len(dm.val_idx) == 10 and len(np.intersect1d(dm.val_idx, dm.train_idx)) == 0
    assert len(dm.val_idx) + len(dm.train_idx) == 40
    torch.manual_seed(123)  # a different training seed must not move the held-out windows
    dm2, _ = make_dm(tmp_path)
    assert np.array_equal(dm.val_idx, dm2.val_idx)


def test_normalised_activations_have_mean_squared_norm_d_in(tmp_path):
    dm, _ = make_dm(tmp_path)
    x = dm.sample_activations(10_000)
    assert x.shape[1] == 16
    assert abs(x.pow(2).sum(-1).mean().item() - 16) < 0.1 * 16


def test_train_loader_shuffles_windows_not_tokens(tmp_path):
    dm, source = make_dm(tmp_path)
    chunk = next(source.chunks(0, 40))
    batch = next(iter(dm.train_dataloader()))
    # every row of the batch is exactly one cached window, unchanged
    rows = (chunk.x_NTD * dm.scale).flatten(1)
    for row in batch.x_BTD.flatten(1):
        assert torch.isclose(rows, row, atol=1e-6).all(1).any()


def test_fewer_training_windows_than_one_batch_is_a_one_line_error(tmp_path):
    dm, _ = make_dm(tmp_path, batch_windows=64)  # 30 training windows
    with pytest.raises(UserError, match="30 training window.*data.batch_windows=64: lower data.batch_windows"):
        dm.train_dataloader()
