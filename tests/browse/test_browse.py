"""The feature browser: a TopK and a recurrent run trained in-process on the tiny LM, their site, and
the site in headless Chromium (no console errors, sortable table, text shown as text, a screenshot)."""

import os
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import ctxsae.browse.site
import ctxsae.eval.run
from ctxsae.browse import evaluate_and_browse
from ctxsae.browse.site import BrowseConfig, check_same_windows, collect_site
from ctxsae.browse.__main__ import main as browse_main
from ctxsae.browse.html import feature_html
from ctxsae.cache.store import CacheConfig
from ctxsae.data.synthetic import SyntheticSource
from ctxsae.errors import UserError
from ctxsae.eval.config import EvalConfig, ProbeConfig
from ctxsae.models.recurrent import RecurrentConfig, RecurrentSAE
from ctxsae.train.datamodule import ActivationDataModule, DataConfig
from ctxsae.train.run_dir import open_run
from tests.conftest import train_run

ATTACK = "<script>alert(1)</script>"
# Every 128-byte window holds the attack whole (lines are ~75 bytes), with Cyrillic and CJK around it.
TEXT = "\n".join(f"Line {i}: the quick brown fox {ATTACK} Съешь ещё 你好世界 {i}." for i in range(150))
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def train_tiny(tmp: Path, model: str, *overrides: str) -> Path:
    return train_run(tmp / model, [
        "lm=tiny", "data=local", f"data.source.data_files={tmp / 'corpus.txt'}", "data.n_ctx=128",
        "data.draw_windows=96",
        "data.batch_windows=8", f"model={model}", "model.d_sae=128", "model.k=8", f"cache.root={tmp / 'cache'}",
        "trainer.enable_progress_bar=false", "max_tokens=8192", "trainer.val_check_interval=100",
        "logger=csv", *overrides,
    ])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browse")
    (tmp / "corpus.txt").write_text(TEXT)
    (tmp / "fortunes" / "de").mkdir(parents=True)
    english = "".join(f"Saying {i}: the early bird catches the worm, or so.\n%\n" for i in range(12))
    german = "".join(f"Spruch {i}: Morgenstund hat Gold im Mund, sagt man.\n%\n" for i in range(12))
    (tmp / "fortunes" / "fortunes").write_text(english)
    (tmp / "fortunes" / "de" / "sprueche").write_text(german)
    topk = train_tiny(tmp, "topk")
    recurrent = train_tiny(tmp, "recurrent", "model.retention_init=1.0")  # holds from the start: carried bands
    return SimpleNamespace(tmp=tmp, topk=topk, recurrent=recurrent, fortunes=tmp / "fortunes")


@pytest.fixture(scope="module")
def site_dir(runs):
    args = [str(runs.recurrent), "--compare", str(runs.topk), "--features", "6", "--windows", "3", "--feature", "0",
            "--probe-root", str(runs.fortunes), "--probe-pairs", "en-de", "--probe-windows", "12"]
    assert browse_main(args) == 0
    return runs.recurrent / "browse"


def test_cli_writes_a_self_contained_site_with_escaped_text(site_dir):
    pages = sorted(p.name for p in site_dir.glob("feature_*.html"))
    assert "index.html" in os.listdir(site_dir) and "compare.html" in os.listdir(site_dir)
    assert 7 <= len(pages) <= 8 and "feature_0.html" in pages  # 6 most active, latent 0, the probe's latent
    for path in site_dir.glob("*.html"):
        html = path.read_text(encoding="utf-8")
        assert '<meta charset="utf-8">' in html
        assert "http" not in html and " src=" not in html and "<link rel=\"stylesheet\"" not in html  # nothing fetched
        assert ATTACK not in html
    feature = next(p for p in site_dir.glob("feature_*.html") if p.name != "feature_0.html").read_text(encoding="utf-8")
    assert "&lt;" in feature and ">ъ<" in feature and ">你<" in feature  # escaped markup; UTF-8 text as it is
    index = (site_dir / "index.html").read_text(encoding="utf-8")
    assert "switch AUROC" in index and "the probe was skipped" not in index and "compare.html" in index


def test_site_data_attribution_sums_to_the_effective_code(runs):
    run = open_run(str(runs.recurrent), "cpu")
    cfg = BrowseConfig(n_features=4, n_windows=2, eval=EvalConfig(probe=ProbeConfig(n_windows=0)))
    site = collect_site(run.sae, run.dm, cfg, run.extractor, name="recurrent")
    assert site.contextual and site.summary["windows"] == len(run.dm.val_idx) and len(site.pages) == 4
    assert any("no language-switch probe" in n for n in site.notes)
    for page in site.pages:
        a = page.attribution
        assert a is not None and sum(c for _, c in a.sources) == pytest.approx(a.value, rel=1e-4, abs=1e-5)
        assert len(page.logits["promoted"]) == 10 and page.logits["promoted"][0][1] >= page.logits["promoted"][-1][1]
        assert sum(page.histogram["novel"]) == round(page.stats.frequency * site.summary["n_tokens"])
    # with retention 1 some activation is carried from an earlier onset
    assert any(s < page.attribution.position for page in site.pages for s, _ in page.attribution.sources)
    assert all(0 <= s.onset_share <= 1 for s in site.features if s.frequency > 0)
    text = "".join(site.windows[site.pages[0].rows[0].window].tokens)
    assert ATTACK in text and "Съешь" in text and "你好" in text  # a character's bytes join at its last token


def test_synthetic_data_shows_positions_and_skips_the_logit_effect(tmp_path):
    source = SyntheticSource(d_in=16, n_windows=24, n_ctx=16, n_region_groups=2, group_size=2, n_token_features=16,
                             seed=0)
    data = DataConfig(n_ctx=16, exclude_first=0, val_fraction=0.25)
    dm = ActivationDataModule(source, data, CacheConfig(root=str(tmp_path)))
    dm.prepare_data()
    torch.manual_seed(0)
    sae = RecurrentSAE(RecurrentConfig(d_in=16, d_sae=32, k=4, retention_init=1.0)).eval()
    sae.act_scale.fill_(1.0)
    site = collect_site(sae, dm, BrowseConfig(n_features=3, n_windows=2))
    assert all(w.tokens is None for w in site.windows.values()) and all(p.logits is None for p in site.pages)
    assert any("logit effect: skipped" in n for n in site.notes)
    assert any("no language-switch probe" in n for n in site.notes)
    html = feature_html(site, site.pages[0])
    assert 'class="tok pos"' in html and "no logit effect" in html
    assert "Where an effective activation comes from" in html


def test_evaluate_report_html_writes_the_browser_from_the_evaluations_pass(runs, monkeypatch):
    """report=html reads the held-out windows once for evaluation and browser (and once more for the pages
    of the chosen latents), and runs the probe once."""
    reads, probes = [], []
    held_out_batches = ActivationDataModule.held_out_batches
    monkeypatch.setattr(ActivationDataModule, "held_out_batches",
                        lambda self, *a, **kw: reads.append(1) or held_out_batches(self, *a, **kw))
    language_switch = ctxsae.eval.run.language_switch
    monkeypatch.setattr(ctxsae.eval.run, "language_switch", lambda *a: probes.append(1) or language_switch(*a))
    monkeypatch.setattr(ctxsae.browse.site, "language_switch", lambda *a: pytest.fail("the browser ran the probe again"))
    cfg = EvalConfig(run=str(runs.topk), downstream=False, tensorboard=False, heatmap_windows=1, report="html",
                     probe=ProbeConfig(n_windows=12, root=str(runs.fortunes), pairs=["en-de"]))
    evaluation, index = evaluate_and_browse(cfg)
    assert (len(reads), len(probes)) == (2, 1)
    assert index == runs.topk / "browse" / "index.html" and len(list(index.parent.glob("feature_*.html"))) >= 50
    html = index.read_text(encoding="utf-8")
    assert "TopKSAE" in html and "the probe was skipped" not in html
    assert f"{evaluation.results['reconstruction']['fvu']:.3f}" in html  # the evaluation's figures, not another pass's
    with pytest.raises(UserError, match="report=none or report=html"):
        EvalConfig(run=str(runs.topk), report="pdf")


def test_bad_input_names_the_fix(runs, tmp_path, capsys):
    for args, message in (([str(tmp_path)], "no sae.safetensors"),
                          ([str(runs.topk), "--feature", "999", "--probe-windows", "0"],
                           "out of range: this SAE has latents 0..127")):
        with pytest.raises(SystemExit) as exit_:
            browse_main(args)
        assert exit_.value.code == 1 and message in capsys.readouterr().err
    a = SimpleNamespace(run_dir=Path("a"), dm=SimpleNamespace(cache=SimpleNamespace(folder=Path("c1")), val_idx=[1, 2]))
    b = SimpleNamespace(run_dir=Path("b"), dm=SimpleNamespace(cache=SimpleNamespace(folder=Path("c2")), val_idx=[1, 2]))
    with pytest.raises(UserError, match="different activation caches"):
        check_same_windows(a, b)


# -- in a real browser -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: run scripts/setup.sh (it installs the Debian package chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is missing: run scripts/setup.sh")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def open_page(browser, path: Path):
    """The page at file://path, with every console error, page error, dialog and non-local request recorded."""
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    problems = []
    page.on("console", lambda m: m.type in ("error", "warning") and problems.append(f"console {m.type}: {m.text}"))
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
    page.on("request", lambda r: r.url.startswith(("file://", "data:")) or problems.append(f"request {r.url}"))
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    return page, problems


def test_pages_load_cleanly_and_show_text_as_text(browser, site_dir):
    for path in sorted(site_dir.glob("*.html")):
        page, problems = open_page(browser, path)
        assert problems == [], path.name
        scripts = page.locator("script").count()
        assert scripts == (1 if path.name == "index.html" else 0), path.name  # only the sorting script
        if path.name != "index.html":
            text = page.locator("body").text_content()
            assert all(s in text for s in (ATTACK, "quick brown", "Съешь", "你好世界")), path.name
        page.close()


def test_index_lists_the_features_and_sorts_by_a_clicked_column(browser, site_dir):
    page, problems = open_page(browser, site_dir / "index.html")
    linked = sorted(int(p.stem.split("_")[1]) for p in site_dir.glob("feature_*.html"))
    assert sorted(int(t) for t in page.locator("#features a").all_text_contents()) == linked

    def column(k: int) -> list[float]:
        cells = f"#features tbody tr td:nth-child({k})"
        return [float(v) for v in page.eval_on_selector_all(cells, "cs => cs.map(c => c.dataset.v)") if v]

    assert column(1) == sorted(column(1))  # by latent as written
    page.click("th:has-text('firing frequency')")
    freq = column(2)
    assert freq == sorted(freq, reverse=True) and column(1) != sorted(column(1))
    page.click("th:has-text('firing frequency')")
    assert column(2) == sorted(freq)
    page.click("th:has-text('onset share')")
    assert column(6) == sorted(column(6), reverse=True)
    page.click("#features a >> nth=0")
    page.wait_for_load_state("load")
    assert page.url.endswith(".html") and "Latent" in page.locator("h1").text_content()
    assert problems == []


def test_screenshot_of_a_recurrent_feature_page(browser, site_dir, runs):
    name = next(p for p in sorted(site_dir.glob("feature_*.html")) if p.name != "feature_0.html")
    page, problems = open_page(browser, name)
    shot = runs.tmp / "feature_page.png"
    page.screenshot(path=str(shot), full_page=True)
    png = shot.read_bytes()
    width, height = struct.unpack(">II", png[16:24])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000 and width >= 1000 and height > 900
    assert page.locator("svg rect").count() > 0 and page.locator("span.tok[style*='background']").count() > 10
    assert page.locator("h2", has_text="Where an effective activation comes from").count() == 1
    assert problems == []
