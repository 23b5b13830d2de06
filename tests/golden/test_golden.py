"""The stored tiny runs evaluate and browse as they did when the fixture was made (tests/golden/make.py): the
same eval.md and feature-browser pages, and the same eval.json (timings aside) up to float rounding. The last
digits of a float32 LM pass depend on the CPU (measured: relative 2e-5 at most, in the KL and CE-recovered
figures, between two x86 machines), so eval.json's numbers are compared at rel 1e-4; everything else exactly."""

import difflib
import json
import math

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
        if rel.endswith(".json") and same_up_to_float_rounding(json.loads(got[rel]), json.loads(expected[rel])):
            continue
        if got[rel] != expected[rel]:
            diff = "\n".join(list(difflib.unified_diff(expected[rel].splitlines(), got[rel].splitlines(), lineterm=""))[:40])
            pytest.fail(f"{rel} differs from the golden file (regenerate with tests/golden/make.py only on purpose):\n{diff}")
    assert set(RUNS) == {rel.split("/")[0] for rel in got}


def same_up_to_float_rounding(got, expected) -> bool:
    """The same JSON tree: floats within rel 1e-4, every other leaf (and the structure) exactly."""
    a, b = leaves(got), leaves(expected)
    return a.keys() == b.keys() and all(
        math.isclose(a[k], b[k], rel_tol=1e-4) if isinstance(b[k], float) and isinstance(a[k], int | float) else a[k] == b[k]
        for k in b)


def leaves(tree, path: str = "") -> dict:
    """{path: value} of a JSON tree's leaves."""
    if isinstance(tree, dict | list):
        items = tree.items() if isinstance(tree, dict) else enumerate(tree)
        return {k: v for key, sub in items for k, v in leaves(sub, f"{path}/{key}").items()}
    return {path: tree}
