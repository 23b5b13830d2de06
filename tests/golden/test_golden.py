"""The stored tiny runs evaluate and browse exactly as they did when the fixture was made (tests/golden/make.py):
the same eval.json (timings aside), eval.md and feature-browser pages."""

import difflib

import pytest

from tests.golden.make import HERE, RUNS, evaluate_and_browse, lay_out, normalised


def test_evaluation_and_browser_match_the_golden_files(tmp_path):
    lay_out(tmp_path)
    evaluate_and_browse(tmp_path)
    got = normalised(tmp_path)
    expected = {str(p.relative_to(HERE / "expected")): p.read_text(encoding="utf-8")
                for p in sorted((HERE / "expected").rglob("*")) if p.is_file()}
    assert sorted(got) == sorted(expected)
    for rel in expected:
        if got[rel] != expected[rel]:
            diff = "\n".join(list(difflib.unified_diff(expected[rel].splitlines(), got[rel].splitlines(), lineterm=""))[:40])
            pytest.fail(f"{rel} differs from the golden file (regenerate with tests/golden/make.py only on purpose):\n{diff}")
    assert set(RUNS) == {rel.split("/")[0] for rel in got}
