"""A tiny Debian Reference for tests: two chapters in XHTML as Debian ships them, in parallel translations."""

from pathlib import Path

_CHAPTER = """<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.1//EN" "http://www.w3.org/TR/xhtml11/DTD/xhtml11.dtd">
<html xmlns="http://www.w3.org/1999/xhtml">
  <head><title>{title}</title></head>
  <body>
    <div class="navheader"><table><tr><th>{title}</th></tr></table></div>
    <div class="chapter">
      <div class="titlepage"><h1 class="title"><a id="x"/>{title}</h1></div>
      <div class="toc"><p><strong>Contents</strong></p><dl class="toc"><dt>1.1 {title}</dt></dl></div>
      <p>{prose} <code class="literal">apt</code>   {prose2}
      </p>
      <div class="itemizedlist"><ul class="itemizedlist">
        <li class="listitem"><p>{item}</p></li>
        <li class="listitem">{item2}<ul><li>{item3}</li></ul>{item4}</li>
      </ul></div>
      <div class="tip"><h3 class="title">{tip}</h3><p>{note}</p></div>
      <div class="table"><p class="title"><strong>{caption}</strong></p>
        <table><tr><th>{cell}</th><td><p>{cell2}</p></td></tr></table></div>
      <pre class="screen">$ ls -l
  total 0
</pre>
    </div>
    <div class="navfooter"><p>{title}</p></div>
  </body>
</html>
"""

BOOK_TEXT = {
    "en": dict(title="Chapter 1. Package management", prose="Debian uses", prose2="to install packages.",
               item="Update first.", item2="Then choose", item3="a mirror", item4="and upgrade.", tip="Tip",
               note="Read the release notes.", caption="Table 1.1. Tools", cell="Name", cell2="A package tool."),
    "de": dict(title="Kapitel 1. Paketverwaltung", prose="Debian benutzt", prose2="zum Installieren von Paketen.",
               item="Zuerst aktualisieren.", item2="Dann wählen", item3="einen Spiegel", item4="und aktualisieren.",
               tip="Tipp", note="Lesen Sie die Hinweise zur Veröffentlichung.", caption="Tabelle 1.1. Werkzeuge",
               cell="Name", cell2="Ein Paketwerkzeug."),
}
# (kind, text) of every block of a chapter, in reading order: what the parser must return.
BOOK_BLOCKS = [
    ("heading", "{title}"), ("prose", "{prose} apt {prose2}"), ("list_item", "{item}"), ("list_item", "{item2}"),
    ("list_item", "{item3}"), ("list_item", "{item4}"), ("note", "{tip}"), ("note", "{note}"),
    ("heading", "{caption}"), ("table_cell", "{cell}"), ("table_cell", "{cell2}"), ("code", "$ ls -l\n  total 0"),
]


def chapter_fields(lang: str, n: int) -> dict[str, str]:
    """The texts of chapter ``n`` (0-based): chapter 0's with the chapter number appended after the first."""
    return {k: v + str(n + 1) * bool(n) for k, v in BOOK_TEXT[lang].items()}


def expected_blocks(lang: str, n: int = 0) -> list[tuple[str, str]]:
    return [(kind, text.format(**chapter_fields(lang, n))) for kind, text in BOOK_BLOCKS]


def write_tiny_book(root, languages=("en", "de"), chapters=("ch01", "ch02")):
    """Chapters ``<name>.<lang>.html`` under ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for lang in languages:
        for n, name in enumerate(chapters):
            (root / f"{name}.{lang}.html").write_text(_CHAPTER.format(**chapter_fields(lang, n)), encoding="utf-8")
    (root / "index.html").write_text("<html><head><meta http-equiv='refresh'></head></html>")  # not XHTML: skipped
    return root
