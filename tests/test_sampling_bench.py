"""bench/decode.py's pure parts: metrics, the targets summary, and the RESULTS.md section writer."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
decode = pytest.importorskip("decode")


def test_distinct_n():
    assert decode.distinct_n([[1, 2, 3, 4]], 2) == 1.0
    assert decode.distinct_n([[1, 2, 1, 2, 1, 2]], 2) == pytest.approx(2 / 5)
    assert decode.distinct_n([[1, 1, 1], [1, 2, 3]], 1) == pytest.approx((1 / 3 + 1) / 2)


def _row(method, tps, ppl, d2=0.9, length=128):
    return {"method": method, "length": length, "tokens_per_second": tps, "gen_ppl": ppl, "distinct_2": d2}


def test_summary_needs_equal_perplexity_and_diversity():
    rows = [
        _row("AR + KV cache", 100, 50),
        _row("reference (random, T=n)", 10, 200),
        _row("reference (random, T=n/4)", 500, 190),  # the reference itself never counts as difflm's best
        _row("loops", 900, 20, d2=0.3),  # low perplexity by repetition: not equal quality
        _row("threshold dual", 150, 54),
        _row("low_confidence dual T=n/4", 400, 180),
    ]
    lines = decode.summary(rows)
    assert "threshold dual, 150 tok/s = 1.50x AR" in lines[0]
    assert "low_confidence dual T=n/4, 40.0x the reference" in lines[1]
    rows[4]["gen_ppl"] = 80
    assert "no diffusion setup within 10%" in decode.summary(rows)[0]


def test_write_section_keeps_the_rest_of_the_file(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Results\n\n## Training\n\ntrain text\n")
    decode.write_section(path, "table v1")
    decode.write_section(path, "table v2")
    text = path.read_text()
    assert text.count("## Decoding") == 1 and "table v2" in text and "table v1" not in text
    assert text.startswith("# Results\n\n## Training\n\ntrain text\n")
    # hand-written analysis after the generated block survives a rewrite
    path.write_text(text + "\nanalysis by hand\n\n## Later\n")
    decode.write_section(path, "table v3")
    assert "analysis by hand" in path.read_text() and "## Later" in path.read_text()
