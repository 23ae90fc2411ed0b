"""Task tokenizers (`difflm data tokenizer`): the bundled tokenizer's special ids and round trip with a
vocabulary learnt from one task; one token per digit with --split-digits, one per sudoku cell without."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from difflm.cli import main
from difflm.tasks import make_examples, write_jsonl
from difflm.tasks.formatting import sft_texts
from difflm.tasks.tokenizer import SPECIAL_TOKENS, save_task_tokenizer, sft_file_texts, train_task_tokenizer


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("task-tok")
    return {task: write_jsonl(make_examples(task, 200, split="train", **knobs), root / f"{task}.jsonl")
            for task, knobs in (("sudoku", {"blanks": "20-30"}), ("gsm", {}))}


def test_specials_bos_and_exact_round_trip(tmp_path, files):
    tok = train_task_tokenizer(sft_file_texts([files["gsm"]]), 400, split_digits=True)
    loaded = AutoTokenizer.from_pretrained(save_task_tokenizer(tok, tmp_path / "tok"))
    assert 260 <= len(loaded) <= 400
    assert [loaded.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert (loaded.bos_token_id, loaded.eos_token_id, loaded.pad_token_id, loaded.mask_token_id) == (0, 1, 2, 3)
    for text in ["Question: Tom has 12 apples.\nAnswer: 3 * 4 = 12", "caf\u00e9 \u2014 \U0001F600 tabs\t", "", "  "]:
        ids = loaded(text)["input_ids"]
        assert ids[0] == 0 and 3 not in ids  # BOS first; text never encodes to the mask
        assert loaded.decode(ids, skip_special_tokens=True) == text  # byte level: nothing is unknown


def test_split_digits_gives_one_token_per_digit(files):
    texts = sft_file_texts([files["gsm"]])
    split = train_task_tokenizer(texts, 400, split_digits=True)
    whole = train_task_tokenizer(texts, 400, split_digits=False)
    pieces = split.convert_ids_to_tokens(split("He has 9 + 12 = 21 eggs.", add_special_tokens=False)["input_ids"])
    digits = [p for p in pieces if any(c.isdigit() for c in p)]
    assert digits == ["9", "1", "2", "2", "1"]
    # without it numbers may merge: the same text takes no more tokens
    assert len(whole("9 + 12 = 21")["input_ids"]) <= len(split("9 + 12 = 21")["input_ids"])


def test_sudoku_cells_are_one_token_each(files):
    tok = train_task_tokenizer(sft_file_texts([files["sudoku"]]), 300)
    record = json.loads(open(files["sudoku"]).readline())
    prompt, response = sft_texts(record)
    ids = tok(response, add_special_tokens=False)["input_ids"]
    assert len(ids) == 89  # 81 cells and 8 line breaks
    cells = [tok.decode([i]) for i in ids if tok.decode([i]) != "\n"]
    assert "".join(c.strip() for c in cells) == record["solution"]


def test_cli_writes_a_loadable_tokenizer_and_refuses_bad_input(tmp_path, files, capsys):
    out = tmp_path / "tok"
    assert main(["data", "tokenizer", str(files["gsm"]), "--vocab-size", "320", "--split-digits", "--out", str(out)]) == 0
    assert "tokens per example" in capsys.readouterr().err
    assert len(AutoTokenizer.from_pretrained(out)) <= 320
    assert main(["data", "tokenizer", str(files["gsm"]), "--vocab-size", "100", "--out", str(tmp_path / "x")]) == 2
    assert "at least 260" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{"prompt": \n')
    assert main(["data", "tokenizer", str(bad), "--vocab-size", "300", "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{bad}:2" in err and len(err.splitlines()) == 1
