import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM

from ctxsae.errors import UserError
from ctxsae.extract.activations import Extractor
from ctxsae.extract.lm import LoadedLM, load_tiny
from ctxsae.extract.tiny import byte_tokenizer


@pytest.fixture(scope="module")
def tiny():
    return load_tiny(n_layers=3, d_model=64, n_heads=4, seed=0)


def tokens(n=3, t=20, seed=0):
    return torch.randint(0, 256, (n, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("layer", [0, 1])
def test_resid_post_equals_hf_hidden_states_exactly(tiny, layer):
    ids = tokens()
    acts = Extractor(tiny, layer, "resid_post")(ids)
    with torch.no_grad():
        ref = tiny.model(ids, output_hidden_states=True).hidden_states[layer + 1]
    assert torch.equal(acts, ref)


@pytest.mark.parametrize("site,module", [("attn_out", "self_attn"), ("mlp_out", "mlp")])
def test_attn_and_mlp_sites_equal_plain_torch_hooks(tiny, site, module):
    ids = tokens()
    seen = []
    sub = getattr(tiny.model.model.layers[1], module)
    handle = sub.register_forward_hook(lambda m, i, o: seen.append(o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        tiny.model(ids)
    handle.remove()
    assert torch.equal(Extractor(tiny, 1, site)(ids), seen[0])


def test_forward_stops_after_the_hook_layer(tiny):
    calls = []
    handle = tiny.model.model.layers[2].register_forward_hook(lambda *a: calls.append(1))
    Extractor(tiny, 0, "resid_post")(tokens())
    handle.remove()
    assert calls == []


def test_out_of_range_layer_and_unknown_site_name_the_fix(tiny):
    with pytest.raises(UserError, match=r"layers 0\.\.2 \(set lm.layer\)"):
        Extractor(tiny, 3, "resid_post")
    with pytest.raises(UserError, match="lm.site"):
        Extractor(tiny, 0, "resid_mid")


@pytest.mark.parametrize(
    "make",
    [
        lambda: GPT2LMHeadModel(GPT2Config(vocab_size=257, n_embd=32, n_layer=2, n_head=2, n_positions=64)),
        lambda: GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=257, hidden_size=32, num_hidden_layers=2,
                                                 num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)),
    ],
    ids=["gpt2", "gpt_neox"],
)
def test_other_layouts_resolve_and_match_hidden_states(make):
    torch.manual_seed(0)
    lm = LoadedLM(make().eval(), byte_tokenizer(), "x")
    ids = tokens(2, 16)
    with torch.no_grad():
        ref = lm.model(ids, output_hidden_states=True).hidden_states[1]
    assert torch.equal(Extractor(lm, 0, "resid_post")(ids), ref)


def test_book_windows_carry_labels_into_the_cache_and_long_windows_name_the_limit(tiny_book, tmp_path):
    from ctxsae.cache.store import CacheConfig, open_or_build
    from ctxsae.data.debian_reference import DebianReferenceSource
    from ctxsae.data.windows import make_windows
    from ctxsae.extract.activations import LMActivations, LMConfig

    text = DebianReferenceSource(str(tiny_book), ["en", "de"])
    lm = LMConfig(loader={"_target_": "ctxsae.extract.lm.load_tiny", "n_layers": 2}, layer=1, batch_windows=4)
    cfg = CacheConfig(root=str(tmp_path / "cache"), dtype="float32", shard_windows=8)
    source = LMActivations(text, lm, n_ctx=64, draw_windows=12, seed=0)
    cache = open_or_build(source, cfg, progress=False)
    assert cache.labels is not None and set(cache.labels.kinds) == {"heading", "prose", "list_item", "note", "table_cell", "code"}
    assert cache.labels.languages == ("en", "de")
    # The stored labels are those of the drawn windows of the whole labelled stream.
    full = make_windows(text.documents(), source.extractor.loaded.tokenizer, 64, doc_separator_id=256)
    keep = torch.randperm(len(full.tokens_NT), generator=torch.Generator().manual_seed(0))[:12].sort().values
    assert torch.equal(cache.labels.block_NT, full.labels.block_NT[keep])
    np.testing.assert_array_equal(cache.tokens, full.tokens_NT[keep].numpy())

    too_long = LMActivations(text, lm, n_ctx=4096, draw_windows=4, seed=0)  # load_tiny: 2048 positions
    with pytest.raises(UserError, match="data.n_ctx=4096 is longer than .* position limit of 2048 tokens: lower data.n_ctx"):
        open_or_build(too_long, cfg, progress=False)
    assert len(list((tmp_path / "cache").glob("*/manifest.json"))) == 1  # nothing written for the long windows


def test_several_layers_in_one_pass_fill_the_caches_single_layer_runs_find(tiny_book, tmp_path):
    from ctxsae.cache.store import CacheConfig, open_or_build, open_or_build_joint
    from ctxsae.data.debian_reference import DebianReferenceSource
    from ctxsae.extract.activations import LMActivations, LMConfig

    text = DebianReferenceSource(str(tiny_book), ["en"])
    loader = {"_target_": "ctxsae.extract.lm.load_tiny", "n_layers": 3}
    cfg = CacheConfig(root=str(tmp_path / "cache"), dtype="float32", shard_windows=4)

    def alone(layer):
        return LMActivations(text, LMConfig(loader=loader, layer=layer, batch_windows=3), n_ctx=32, draw_windows=10, seed=0)

    first = open_or_build(alone(0), cfg, progress=False)  # layer 0 exists already: the joint pass leaves it alone
    written = (first.folder / "manifest.json").stat().st_mtime_ns
    joint = LMActivations(text, LMConfig(loader=loader, layer=0, batch_windows=3), 32, 10, 0, layers=[2, 0, 1])
    caches = open_or_build_joint(joint, cfg, progress=False)
    assert [c.manifest["fingerprint"]["source"]["layer"] for c in caches] == [0, 1, 2]
    assert caches[0].folder == first.folder and (first.folder / "manifest.json").stat().st_mtime_ns == written
    for layer, cache in zip([0, 1, 2], caches):
        single = alone(layer)
        reopened = open_or_build(single, cfg, progress=False)  # what train.py lm.layer=L opens: found, not extracted
        assert reopened.folder == cache.folder and "extractor" not in vars(single)
        # One forward stopped after layer 2 gives each layer what a forward stopped there gives.
        ref = Extractor(joint.extractor.loaded, layer, "resid_post")(torch.as_tensor(cache.tokens[:3]).long())
        torch.testing.assert_close(torch.from_numpy(cache.read_x(np.arange(3))), ref)
        assert torch.equal(cache.labels.kind_NT, caches[0].labels.kind_NT)
