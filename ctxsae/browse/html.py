"""Render a ``Site`` (and a ``Comparison``) into static pages that open from disk and work offline.

One folder: ``index.html`` (the latent table, sortable by clicking a header), ``feature_<i>.html``
per page, ``compare.html`` for a comparison. Everything is inline: CSS, the sorting script,
histograms as SVG. Nothing is fetched. Text from the data (tokens, run names, notes) passes
through ``html.escape`` and nowhere else; numbers are formatted by Python. Each token is shaded by
a code's value relative to the largest |value| the latent reaches in the rows shown with it:
orange for positive, blue for negative (a contextual SAE's reset). A token holding only part of a
character (its bytes complete at a later token) shows as a grey dot drawn by CSS, so the text
itself (and its copy-paste) stays exactly the decoded text.
"""

from __future__ import annotations

import math
from html import escape
from pathlib import Path

from ctxsae.browse.site import CodeRow, Comparison, FeaturePage, FeatureStats, Site, Window

CSS = """
body { font: 14px/1.45 "DejaVu Sans", "Noto Sans", "WenQuanYi Zen Hei", sans-serif; margin: 1.5em 2em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; } td, th { padding: 2px 10px; text-align: right; border-bottom: 1px solid #eee; }
th { background: #f4f4f4; } th:first-child, td:first-child { text-align: left; }
table.sortable th { cursor: pointer; user-select: none; }
th[data-order="desc"]::after { content: " \\25BC"; } th[data-order="asc"]::after { content: " \\25B2"; }
.note { color: #666; font-size: 0.9em; }
.window { margin: 0.8em 0 1.2em; } .label { font-size: 0.8em; color: #555; }
.codes { font-family: "DejaVu Sans Mono", "WenQuanYi Zen Hei Mono", monospace; white-space: pre-wrap;
         word-break: break-all; margin: 1px 0 4px; padding: 3px; border: 1px solid #eee; }
.tok { border-radius: 2px; } .skip { color: #aaa; } .doc { border-left: 2px solid #2a2; }
.pos { margin-right: 0.35em; }
.part::before { content: "\\00b7"; color: #bbb; }  /* a piece of a character: visible, yet not in the text */
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 1.5em; }
svg text { font: 10px sans-serif; fill: #444; }
"""

# Click a header: sort the rows by that column's data-v, largest first, again for smallest first; blanks last.
SORT_JS = """
document.querySelectorAll("table.sortable th").forEach((th, col) => th.addEventListener("click", () => {
  const table = th.closest("table"), body = table.tBodies[0];
  const desc = th.dataset.order !== "desc";
  table.querySelectorAll("th").forEach(h => delete h.dataset.order);
  th.dataset.order = desc ? "desc" : "asc";
  const key = tr => { const v = parseFloat(tr.cells[col].dataset.v); return Number.isNaN(v) ? null : v; };
  const rows = Array.from(body.rows).sort((r, s) => {
    const a = key(r), b = key(s);
    if (a === null || b === null) return (a === null) - (b === null);
    return desc ? b - a : a - b;
  });
  body.append(...rows);
}));
"""

STAT_COLUMNS = [  # (FeatureStats field, header, tooltip)
    ("frequency", "firing frequency", "share of held-out positions where the novel code fires"),
    ("frequency_effective", "active (effective)", "share of held-out positions where the effective code is non-zero"),
    ("run_length", "mean run length", "active positions per run of the effective code"),
    ("flicker", "flicker", "on-to-off switches of the effective code per active position"),
    ("onset_share", "onset share", "share of novel firings at the first position of an effective run"),
    ("switch_auroc", "switch AUROC", "language-switch probe: does the novel code mark the switch (all probe windows)"),
]


def page(title: str, body: str, script: str = "") -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<link rel="icon" href="data:,"><title>{escape(title)}</title><style>{CSS}</style></head>\n'
        f"<body>\n{body}\n{f'<script>{script}</script>' if script else ''}</body></html>\n"
    )


def fmt(v: float | None, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:.{digits}g}" if abs(v) < 1e-2 and v != 0 else f"{v:.{digits}f}"


def _cell(v: float | None) -> str:
    key = "" if v is None or not math.isfinite(v) else repr(v)
    return f'<td data-v="{key}">{fmt(v)}</td>'


def _shade(v: float, scale: float) -> str:
    alpha = min(abs(v) / scale, 1.0) if scale > 0 else 0.0
    rgb = "230,85,13" if v > 0 else "49,130,189"
    return f"background:rgba({rgb},{alpha:.2f})" if alpha >= 0.01 else ""


def code_row(row: CodeRow, effective: bool, window: Window, scale: float) -> str:
    """One window as text, each token shaded by the latent's novel (or effective) code; tooltips give both."""
    values = row.effective if effective else row.novel
    spans = []
    for t, v in enumerate(values):
        classes = ["tok"] + (["skip"] if not window.kept[t] else []) + (["doc"] if t in window.doc_starts else [])
        if window.tokens is None:
            text, classes = str(t), classes + ["pos"]
        else:
            text = window.tokens[t].replace("\n", "\u23ce\n")  # a visible newline that still breaks the line
            classes += ["part"] if text == "" else []
        tip = f"position {t}: z {row.novel[t]:.3g}, a {row.effective[t]:.3g}"
        style = _shade(v, scale)
        spans.append(f'<span class="{" ".join(classes)}" style="{style}" title="{tip}">{escape(text)}</span>')
    label = f"{'effective code a' if effective else 'novel code z'} (latent {row.latent})"
    return f'<div class="label">{label}</div><div class="codes">{"".join(spans)}</div>'


def _scale(rows: list[CodeRow]) -> float:
    return max((abs(v) for r in rows for v in (*r.novel, *r.effective)), default=0.0)


def code_rows(row: CodeRow, window: Window, scale: float) -> str:
    """The novel code row over the effective code row of one latent in one window."""
    return code_row(row, False, window, scale) + code_row(row, True, window, scale)


def histogram_svg(hist: dict, width: int = 420, height: int = 150) -> str:
    """Counts of non-zero novel (orange) and effective (blue) values per bin, bars side by side."""
    edges, novel, effective = hist["edges"], hist["novel"], hist["effective"]
    top = max([*novel, *effective, 1])
    n, pad, base = len(novel), 30, height - 20
    bar = (width - pad) / n
    bars = []
    for k in range(n):
        for j, (counts, colour) in enumerate(((novel, "#e6550d"), (effective, "#3182bd"))):
            h = (base - 10) * counts[k] / top
            x = pad + k * bar + j * bar / 2
            bars.append(f'<rect x="{x:.1f}" y="{base - h:.1f}" width="{bar / 2 - 0.5:.1f}" height="{h:.1f}" '
                        f'fill="{colour}">'
                        f"<title>{edges[k]:.3g} to {edges[k + 1]:.3g}: {counts[k]}</title></rect>")
    labels = (f'<text x="{pad}" y="{height - 5}">{edges[0]:.3g}</text>'
              f'<text x="{width}" y="{height - 5}" text-anchor="end">{edges[-1]:.3g}</text>'
              f'<text x="{pad - 4}" y="14" text-anchor="end">{top}</text>'
              f'<text x="{pad - 4}" y="{base}" text-anchor="end">0</text>')
    axis = f'<line x1="{pad}" y1="{base}" x2="{width}" y2="{base}" stroke="#888"/>'
    return f'<svg width="{width}" height="{height}" role="img">{axis}{"".join(bars)}{labels}</svg>'


def _stats_table(stats: FeatureStats) -> str:
    head = "".join(f'<th title="{tip}">{name}</th>' for _, name, tip in STAT_COLUMNS)
    cells = "".join(f"<td>{fmt(getattr(stats, k))}</td>" for k, _, _ in STAT_COLUMNS)
    return f"<table><tr>{head}</tr><tr>{cells}</tr></table>"


def _summary_table(names: list[str], summaries: list[dict]) -> str:
    figures = [("fvu", "held-out FVU"), ("l0", "L0 novel codes"), ("l0_effective", "L0 effective codes"),
               ("dead_fraction", "dead fraction"), ("n_tokens", "positions"), ("windows", "held-out windows")]
    head = "".join(f"<th>{escape(n)}</th>" for n in names)
    body = "".join(f"<tr><td>{label}</td>{''.join(f'<td>{fmt(s[k])}</td>' for s in summaries)}</tr>"
                   for k, label in figures)
    return f"<table><tr><th></th>{head}</tr>{body}</table>"


def index_html(site: Site, has_compare: bool) -> str:
    linked = {p.stats.latent for p in site.pages}
    head = "<th>latent</th>" + "".join(f'<th title="{tip}">{name}</th>' for _, name, tip in STAT_COLUMNS)
    rows = []
    for s in site.features:
        name = f'<a href="feature_{s.latent}.html">{s.latent}</a>' if s.latent in linked else str(s.latent)
        cells = "".join(_cell(getattr(s, k)) for k, _, _ in STAT_COLUMNS)
        rows.append(f'<tr><td data-v="{s.latent}">{name}</td>{cells}</tr>')
    notes = "".join(f'<p class="note">{escape(n)}</p>' for n in site.notes)
    compare = '<p><a href="compare.html">side by side with the baseline run</a></p>' if has_compare else ""
    body = (
        f"<h1>{escape(site.name)}: {escape(site.model)} (d_in {site.d_in}, d_sae {site.d_sae})</h1>"
        f"{_summary_table([site.name], [site.summary])}{compare}{notes}"
        f"<h2>Latents that fire on the held-out windows ({len(site.features)} of {site.d_sae})</h2>"
        f'<p class="note">Click a header to sort. Linked latents have a page ({len(linked)}).</p>'
        f'<table class="sortable" id="features"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )
    return page(f"{site.name}: features", body, SORT_JS)


def _logits(logits: dict | None) -> str:
    if logits is None:
        return '<p class="note">No LM behind these activations: no logit effect.</p>'

    def column(title: str, items: list[tuple[str, float]]) -> str:
        cells = "".join(f"<tr><td><code>{escape(repr(tok))}</code></td><td>{v:+.3f}</td></tr>" for tok, v in items)
        return f"<div><table><tr><th>{title}</th><th>logit</th></tr>{cells}</table></div>"

    return (f'<div class="pair">{column("promoted", logits["promoted"])}'
            f'{column("suppressed", logits["suppressed"])}</div>'
            '<p class="note">Direct logit attribution: W_U (W_dec[i] * final norm weight), later layers skipped; '
            "only the ranking is meaningful.</p>")


def _attribution(p: FeaturePage, window: Window | None) -> str:
    a = p.attribution
    if a is None:
        return '<p class="note">No attribution: a per-token SAE, or the latent is never active.</p>'

    def token(t: int) -> str:
        return escape(repr(window.tokens[t])) if window is not None and window.tokens is not None else ""

    rows = "".join(f"<tr><td>{s}</td><td><code>{token(s)}</code></td><td>{c:+.4f}</td></tr>" for s, c in a.sources)
    return (f"<p>Effective code a = {a.value:.4f} at position {a.position} <code>{token(a.position)}</code> of window "
            f"{a.window} comes from:</p><table><tr><th>position</th><th>token</th><th>contribution</th></tr>{rows}"
            f"<tr><td>sum</td><td></td><td>{sum(c for _, c in a.sources):+.4f}</td></tr></table>")


def feature_html(site: Site, p: FeaturePage) -> str:
    i, scale = p.stats.latent, _scale(p.rows)
    windows = "".join(
        f'<div class="window"><b>held-out window {r.window}</b> <span class="note">peak |a| '
        f"{max(abs(v) for v in r.effective):.3f}</span>{code_rows(r, site.windows[r.window], scale)}</div>"
        for r in p.rows
    ) or '<p class="note">Never active on the held-out windows.</p>'
    window = site.windows.get(p.attribution.window) if p.attribution else None
    body = (
        f'<p><a href="index.html">&larr; all latents of {escape(site.name)}</a></p><h1>Latent {i}</h1>'
        f'<p class="note">{escape(p.why)}; {escape(site.model)}</p>{_stats_table(p.stats)}'
        f"<h2>Top-activating held-out windows</h2>"
        '<p class="note">Orange: positive, blue: negative, relative to the largest |code| in these rows; '
        "grey text: positions left out of the metrics; green bar: a document starts.</p>"
        f"{windows}<h2>Logit effect of the decoder direction</h2>{_logits(p.logits)}"
        f"<h2>Values where the codes are non-zero</h2>{histogram_svg(p.histogram)}"
        '<p class="note">orange: novel code z, blue: effective code a (held-out positions)</p>'
        f"{'<h2>Where an effective activation comes from</h2>' + _attribution(p, window) if site.contextual else ''}"
    )
    return page(f"latent {i}: {site.name}", body)


def compare_html(c: Comparison, linked: set[int]) -> str:
    """Baseline (left) and contextual run (right) on the same windows; links go to the contextual run's pages."""
    blocks = []
    for n, (w, window) in enumerate(c.windows.items()):
        columns = []
        for r, rows in enumerate(c.rows[n]):
            scale = _scale(rows)
            parts = [f"<h3>{escape(c.names[r])} ({escape(c.models[r])})</h3>"]
            for row in rows:
                link = r == len(c.names) - 1 and row.latent in linked
                name = f"latent {row.latent}"
                name = f'<a href="feature_{row.latent}.html">{name}</a>' if link else name
                parts.append(f'<div class="window"><b>{name}</b>{code_rows(row, window, scale)}</div>')
            columns.append(f"<div>{''.join(parts)}</div>")
        blocks.append(f'<h2>held-out window {w}</h2><div class="pair">{"".join(columns)}</div>')
    body = (
        f'<p><a href="index.html">&larr; all latents of {escape(c.names[-1])}</a></p>'
        f"<h1>{' vs '.join(escape(x) for x in c.names)}</h1>{_summary_table(c.names, c.summaries)}"
        '<p class="note">Each run\'s most active latents in each window; shading relative to the largest |code| '
        "of that run in the window.</p>" + "".join(blocks)
    )
    return page(" vs ".join(c.names), body)


def write_site(site: Site, folder: Path, comparison: Comparison | None = None) -> Path:
    """Write the pages into ``folder`` (replacing the pages of an earlier run of the browser); returns index.html."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.html"):
        old.unlink()
    for p in site.pages:
        (folder / f"feature_{p.stats.latent}.html").write_text(feature_html(site, p), encoding="utf-8")
    if comparison is not None:
        compare = compare_html(comparison, {p.stats.latent for p in site.pages})
        (folder / "compare.html").write_text(compare, encoding="utf-8")
    index = folder / "index.html"
    index.write_text(index_html(site, comparison is not None), encoding="utf-8")
    return index
