"""Synthetic task suites (difflm.tasks): deterministic by seed, splits disjoint, correct answers,
the sudoku text layout one token per cell, the sudoku scorer by the rules, gsm files scored by the
gsm8k task, SFT formatting and the chat template, `difflm data`, and clear errors on bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from difflm.cli import main
from difflm.errors import InputError
from difflm.tasks import GENERATORS, keyed_examples, make_examples, split_of
from difflm.tasks import sudoku as sd
from difflm.tasks.formatting import CHAT_TEMPLATE, GSM_PROMPT, sft_texts


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from difflm.bundled import TOKENIZER_DIR

    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


# -- generators -----------------------------------------------------------------------------------
@pytest.mark.parametrize("task,knobs", [("gsm", {}), ("sudoku", {"blanks": "30-40"}), ("countdown", {})])
def test_generators_are_deterministic_by_seed(task, knobs):
    a = make_examples(task, 20, seed=3, **knobs)
    assert a == make_examples(task, 20, seed=3, **knobs)
    assert a != make_examples(task, 20, seed=4, **knobs)
    assert make_examples(task, 5, seed=3, **knobs) == a[:5]  # a longer file extends a shorter one


@pytest.mark.parametrize("task,knobs", [("gsm", {"steps": 2, "numbers": "2-9"}), ("sudoku", {"blanks": 20}),
                                        ("countdown", {"count": 3, "numbers": "1-20"})])
def test_splits_never_share_a_problem(task, knobs):
    """The split is a function of the problem's key: train and test are disjoint whatever the seeds."""
    train = keyed_examples(task, 300, seed=0, split="train", **knobs)
    test = keyed_examples(task, 60, seed=0, split="test", **knobs) + keyed_examples(task, 60, seed=1, split="test", **knobs)
    assert {k for k, _ in train}.isdisjoint({k for k, _ in test})
    assert all(split_of(k) == "train" for k, _ in train) and all(split_of(k) == "test" for k, _ in test)
    assert len({k for k, _ in train}) == 300  # no repeats inside a file
    problem = {"gsm": lambda r: r["question"], "sudoku": lambda r: r["solution"],
               "countdown": lambda r: (tuple(sorted(r["numbers"])), r["target"])}[task]
    assert {problem(r) for _, r in train}.isdisjoint({problem(r) for _, r in test})


def test_gsm_answers_are_right_and_in_gsm8k_layout():
    for steps in (1, 3, 5):
        for record in make_examples("gsm", 40, seed=steps, steps=steps, numbers="3-12"):
            lines = record["answer"].split("\n")
            final = re.fullmatch(r"#### (\d+)", lines[-1])
            assert final, record
            results = []
            for line in lines[:-1]:
                for expr, value in re.findall(r"(\d+(?: [-+*/] \d+)+) = (\d+)", line):
                    assert eval(expr.replace("/", "//")) == int(value), line  # noqa: S307 - our own digits
                    if "/" in expr:
                        a, b = map(int, expr.split(" / "))
                        assert a % b == 0
                    results.append(int(value))
            assert len(results) == steps, record  # one arithmetic step per reasoning line
            assert results[-1] == int(final.group(1))
            assert record["question"].endswith("?") and 0 <= int(final.group(1)) <= 999


def test_gsm_pairwise_sums_change_the_reasoning_only():
    """--sums pairwise writes a total one term at a time; the questions, final answers, splits and every
    other line stay those of the default format."""
    whole = keyed_examples("gsm", 200, seed=0, split="test")
    pairwise = keyed_examples("gsm", 200, seed=0, split="test", sums="pairwise")
    assert [k for k, _ in whole] == [k for k, _ in pairwise]
    changed = 0
    for (_, w), (_, p) in zip(whole, pairwise):
        assert w["question"] == p["question"]
        w_lines, p_lines = w["answer"].split("\n"), p["answer"].split("\n")
        assert w_lines[:-2] == p_lines[:-2] and w_lines[-1] == p_lines[-1]
        terms = re.fullmatch(r"Altogether they have ((?:\d+ \+ )+\d+) = (\d+) (.+)", w_lines[-2])
        if not terms or terms.group(1).count("+") < 2:
            assert w_lines[-2] == p_lines[-2]  # one addition or none: nothing to split
            continue
        changed += 1
        values = [int(v) for v in terms.group(1).split(" + ")]
        sums = re.findall(r"(\d+) \+ (\d+) = (\d+)", p_lines[-2])
        assert len(sums) == len(values) - 1 and p_lines[-2].endswith(f" {terms.group(3)}")
        running = values[0]
        for (a, b, c), v in zip(sums, values[1:]):
            assert (int(a), int(b), int(c)) == (running, v, running + v)
            running += v
        assert running == int(terms.group(2)) == int(w_lines[-1][5:])
    assert changed >= 20
    with pytest.raises(InputError, match="sums must be one of whole, pairwise"):
        make_examples("gsm", 1, sums="running")


def test_gsm_number_range():
    for record in make_examples("gsm", 50, seed=0, numbers="5-9", steps=2):
        start = int(re.search(r"has (\d+)", record["question"]).group(1))
        assert 5 <= start <= 9


def test_sudoku_puzzles_have_the_asked_blanks_and_one_solution():
    records = make_examples("sudoku", 30, seed=0, blanks="35-45")
    for r in records:
        assert 35 <= r["puzzle"].count("0") <= 45
        assert sd.solves(r["puzzle"], r["solution"]) and sd.count_solutions(r["puzzle"]) == 1
    loose = make_examples("sudoku", 5, seed=0, blanks=60, unique=False)
    assert all(r["puzzle"].count("0") == 60 and sd.solves(r["puzzle"], r["solution"]) for r in loose)
    with pytest.raises(InputError, match="too rare"):
        make_examples("sudoku", 1, blanks=60)


# -- sudoku: layout and scorer --------------------------------------------------------------------
def test_sudoku_layout_is_one_token_per_cell(tokenizer):
    cell_tokens = {tokenizer.convert_tokens_to_ids("Ġ" + c) for c in sd.DIGITS + sd.BLANK}
    assert len(cell_tokens) == 10 and tokenizer.unk_token_id not in cell_tokens
    for r in make_examples("sudoku", 10, seed=1, blanks="20-50"):
        for grid in (r["puzzle"], r["solution"]):
            ids = tokenizer(sd.format_grid(grid), add_special_tokens=False)["input_ids"]
            assert len(ids) == 89  # 81 cells + 8 line breaks
            cells = [i for i in ids if i in cell_tokens]
            assert len(cells) == 81 and tokenizer.decode(cells).replace(" ", "") == grid.replace("0", sd.BLANK)
        prompt, response = sd.sudoku_prompt(r["puzzle"]), sd.sudoku_response(r["solution"])
        apart = tokenizer(prompt, add_special_tokens=False)["input_ids"] + tokenizer(response, add_special_tokens=False)["input_ids"]
        assert apart == tokenizer(prompt + response, add_special_tokens=False)["input_ids"]
        assert sd.parse_grid(response) == r["solution"]


def _two_solutions():
    """A puzzle with two valid solutions: swapping the digits 1 and 2 everywhere keeps a grid valid, so
    blanking every 1 and 2 leaves both grids as solutions."""
    solution = make_examples("sudoku", 1, seed=5, blanks=30)[0]["solution"]
    other = solution.translate(str.maketrans("12", "21"))
    puzzle = "".join("0" if c in "12" else c for c in solution)
    return puzzle, solution, other


def test_sudoku_checker_accepts_any_valid_solution_and_rejects_changed_givens():
    puzzle, solution, other = _two_solutions()
    assert other != solution and sd.solves(puzzle, solution) and sd.solves(puzzle, other)
    changed = solution.translate(str.maketrans("34", "43"))  # a valid grid, but givens changed
    assert sd.is_valid_grid(changed) and not sd.solves(puzzle, changed)
    broken = solution[:80] + ("1" if solution[80] != "1" else "2")
    assert not sd.solves(puzzle, broken) and not sd.solves(puzzle, None) and not sd.solves(puzzle, solution[:80])


class _ScriptedLM:
    """An `EvalLM` stand-in that answers prompt n with the n-th scripted text (for scorer tests)."""

    kind, max_length = "ar", 512

    def __init__(self, tokenizer, answers):
        from difflm.evaluation import EvalSettings

        self.tokenizer, self.answers, self.settings, self.prompts = tokenizer, answers, EvalSettings(), []

    bos = property(lambda self: [self.tokenizer.bos_token_id])
    max_new_tokens = property(lambda self: self.settings.generation_budget())  # as `EvalLM` (no model defaults)

    def encode(self, text):
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids):
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def generate(self, prompts, max_new_tokens):
        self.prompts += [list(p) for p in prompts]
        return [self.encode(a)[:max_new_tokens] for a in self.answers[: len(prompts)]]


def test_sudoku_task_scores_by_the_rules(tmp_path, tokenizer):
    from difflm.evaluation import build_task

    puzzle, solution, other = _two_solutions()
    records = make_examples("sudoku", 2, seed=9, blanks=40)
    data = [{"puzzle": puzzle, "solution": solution}] * 2 + records
    path = tmp_path / "sudoku.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in data))
    changed = records[1]["solution"].translate(str.maketrans("34", "43"))
    answers = [sd.sudoku_response(other),  # the other valid solution: solved
               sd.sudoku_response(solution)[:-3],  # 80 cells: not a complete grid
               sd.sudoku_response(records[0]["solution"]),  # the stored solution: solved
               sd.sudoku_response(changed)]  # valid grid that changes givens: not solved
    lm = _ScriptedLM(tokenizer, answers)
    result = build_task("sudoku", path).run(lm)
    m = result.metrics
    assert m["acc"].value == 0.5 and m["valid_grid"].value == 0.75
    blanks = puzzle.count("0")
    assert m[f"acc_blanks_{blanks}"].value == 0.5 and m["acc_blanks_40"].value == 0.5
    assert lm.prompts[0] == lm.bos + lm.encode(sd.sudoku_prompt(puzzle))  # the prompt SFT trains on
    assert result.protocol["max_new_tokens"] == 90


def test_sudoku_file_errors_name_file_and_line(tmp_path):
    from difflm.evaluation import build_task

    good = make_examples("sudoku", 1, seed=0, blanks=30)[0]
    for bad, message in [({"puzzle": good["puzzle"][:80]}, "81 digits"),
                         ({"puzzle": good["puzzle"], "solution": good["solution"][::-1]}, "does not solve"),
                         ({"solution": good["solution"]}, "missing field puzzle")]:
        path = tmp_path / "bad.jsonl"
        path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
        with pytest.raises(InputError, match=f"{re.escape(str(path))}:2: .*{message}"):
            build_task("sudoku", path)
    path.write_text(json.dumps(good) + "\n{oops\n")
    with pytest.raises(InputError, match=f"{re.escape(str(path))}:2: not valid JSON"):
        build_task("sudoku", path)


# -- countdown -------------------------------------------------------------------------------------
def test_countdown_checker_and_task(tmp_path, tokenizer):
    from difflm.evaluation import build_task
    from difflm.tasks import countdown as cd

    records = make_examples("countdown", 40, seed=0, count="3-4", numbers="1-30")
    assert all(cd.solves(r["numbers"], r["target"], r["solution"]) for r in records)
    assert {len(r["numbers"]) for r in records} == {3, 4} and all(1 <= n <= 30 for r in records for n in r["numbers"])
    numbers, target = [3, 5, 7], 22
    assert cd.solves(numbers, target, "3 * 5 = 15\n15 + 7 = 22")
    assert cd.solves(numbers, target, "5 * 3 = 15\n7 + 15 = 22")  # another order: any valid solution
    assert not cd.solves(numbers, target, "3 * 5 = 15\n15 + 7 = 23")  # wrong arithmetic
    assert not cd.solves(numbers, target, "5 * 5 = 25\n25 - 3 = 22")  # 5 used twice, 7 never
    assert not cd.solves(numbers, 15, "3 * 5 = 15")  # 7 unused
    assert not cd.solves([4, 8, 2], 1, "4 / 8 = 0\n0 + 2 = 2") and not cd.solves(numbers, target, None)
    path = tmp_path / "countdown.jsonl"
    data = [{"numbers": numbers, "target": target, "solution": "3 * 5 = 15\n15 + 7 = 22"}] * 2 + records[:2]
    path.write_text("".join(json.dumps(r) + "\n" for r in data))
    answers = ["7 + 15 = 22\n3 * 5 = 15", "5 * 3 = 15\n7 + 15 = 22", records[0]["solution"], "1 + 1 = 2"]
    lm = _ScriptedLM(tokenizer, answers)
    result = build_task("countdown", path).run(lm)
    # the first answer uses 15 before making it; the second is another valid order; the third is stored
    assert [s["solved"] for s in result.samples] == [False, True, True, False]
    assert lm.prompts[0] == lm.bos + lm.encode(cd.countdown_prompt(numbers, target))
    assert sft_texts(data[0]) == (cd.countdown_prompt(numbers, target), data[0]["solution"])
    path.write_text(json.dumps({"numbers": [3, 5], "target": 9, "solution": "3 + 5 = 8"}) + "\n")
    with pytest.raises(InputError, match=f"{re.escape(str(path))}:1: .*does not reach the target"):
        build_task("countdown", path)


# -- gsm files through the gsm8k task --------------------------------------------------------------
def test_gsm_files_score_with_the_gsm8k_task(tmp_path, tokenizer):
    from difflm.evaluation import build_task

    records = make_examples("gsm", 4, seed=2, split="test")
    path = tmp_path / "gsm.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    task = build_task("gsm8k", path)
    right = _ScriptedLM(tokenizer, [" " + r["answer"] for r in records])
    assert task.run(right).metrics["exact_match"].value == 1.0
    wrong = _ScriptedLM(tokenizer, [" " + r["answer"].rsplit("#### ", 1)[0] + "#### 1000" for r in records])
    assert task.run(wrong).metrics["exact_match"].value == 0.0
    # the prompt the gsm8k task builds is the prompt SFT trains on
    prompt, response = sft_texts(records[0])
    assert right.prompts[0] == right.bos + right.encode(prompt) and prompt == GSM_PROMPT.format(question=records[0]["question"])
    assert response == " " + records[0]["answer"]


# -- SFT formatting and the chat template ---------------------------------------------------------
def test_sft_layouts_and_chat_template(tokenizer):
    assert sft_texts({"prompt": "Q", "response": " A"}) == ("Q", " A")
    r = make_examples("sudoku", 1, seed=0, blanks=30)[0]
    assert sft_texts(r) == (sd.sudoku_prompt(r["puzzle"]), sd.sudoku_response(r["solution"]))
    assert not tokenizer.chat_template  # the bundled tokenizer ships none: SFT gives it difflm's
    chat = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "2+2?"},
                         {"role": "assistant", "content": "4"}]}
    prompt, response = sft_texts(chat, tokenizer=tokenizer)
    assert tokenizer.chat_template == CHAT_TEMPLATE
    assert prompt == "<|bos|>Be brief.\nUser: Hi\nAssistant: Hello.<|eos|>User: 2+2?\nAssistant:"
    assert response == " 4<|eos|>"
    for bad, message in [({"messages": [{"role": "user", "content": "Hi"}]}, "at least two"),
                         ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
                          "last message must be the assistant"),
                         ({"messages": [{"role": "robot", "content": "a"}, {"role": "assistant", "content": "b"}]},
                          "role 'robot'"),
                         ({"text": "plain"}, "not an SFT record"),
                         ({"question": "q", "answer": "no final line"}, "####"),
                         ({"puzzle": "1" * 81, "solution": "1" * 81}, "does not solve")]:
        with pytest.raises(InputError, match=message):
            sft_texts(bad, tokenizer=tokenizer, where="f.jsonl:3")


# -- the command ---------------------------------------------------------------------------------
def test_data_task_names_mirror_the_generators():
    from difflm.registry import DATA_TASKS

    assert DATA_TASKS.names() == tuple(GENERATORS)
    assert all(DATA_TASKS.get(name) is GENERATORS[name] for name in GENERATORS)


def test_data_make_choices_mirror_the_library():
    from difflm.registry import DATA_SPLITS, GSM_SUMS
    from difflm.tasks.gsm import SUMS
    from difflm.tasks.splits import SPLITS

    assert DATA_SPLITS == tuple(SPLITS) and GSM_SUMS == tuple(SUMS)


def test_difflm_data_make_writes_the_same_file_twice(tmp_path, capsys):
    a, b = tmp_path / "a.jsonl", tmp_path / "sub" / "b.jsonl"
    for out in (a, b):
        assert main(["data", "make", "sudoku", "--n", "7", "--seed", "2", "--blanks", "30-35", "--out", str(out)]) == 0
    assert a.read_bytes() == b.read_bytes() and len(a.read_text().splitlines()) == 7
    assert main(["data", "make", "gsm", "--n", "3", "--split", "test", "--steps", "2", "--out", str(a)]) == 0
    assert [json.loads(line)["question"] for line in a.read_text().splitlines()] == \
        [r["question"] for r in make_examples("gsm", 3, split="test", steps=2)]
    assert main(["data", "make", "gsm", "--n", "30", "--sums", "pairwise", "--out", str(a)]) == 0
    assert [json.loads(line) for line in a.read_text().splitlines()] == make_examples("gsm", 30, sums="pairwise")
    assert main(["data", "make", "countdown", "--n", "4", "--count", "2-3", "--numbers", "1-9", "--out", str(a)]) == 0
    assert [json.loads(line) for line in a.read_text().splitlines()] == make_examples("countdown", 4, count="2-3",
                                                                                       numbers="1-9")
    capsys.readouterr()
    for argv, message in [(["gsm", "--n", "3", "--blanks", "30"], "--blanks is not a setting of task gsm"),
                          (["sudoku", "--n", "3", "--blanks", "9-3"], "empty range"),
                          (["sudoku", "--n", "0"], "--n must be"),
                          (["sudoku", "--n", "3", "--count", "3"], "--count is not a setting of task sudoku"),
                          (["countdown", "--n", "3", "--sums", "pairwise"], "--sums is not a setting of task countdown"),
                          (["gsm", "--n", "2", "--steps", "many"], "steps must be a number")]:
        assert main(["data", "make", *argv, "--out", str(tmp_path / "x.jsonl")]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


def test_difflm_data_check_reports_tokens_and_names_the_line_that_does_not_fit(tmp_path, capsys):
    path = tmp_path / "mix.jsonl"
    rows = make_examples("sudoku", 2, seed=0, blanks=30) + [{"prompt": "Say hi.", "response": " hi " * 200}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["data", "check", str(path), "--show", "1"]) == 0
    out = capsys.readouterr().out
    assert "3 examples (2 sudoku, 1 pair)" in out and "PROMPT:" in out and "Sudoku" in out
    assert main(["data", "check", str(path), "--seq-length", "192"]) == 2
    err = capsys.readouterr().err
    assert f"{path}:3: the example is" in err and "longer than seq_length 192" in err
    assert main(["data", "check", str(path), "--block-size", "192"]) == 2  # the flag's old name still works
    assert "longer than seq_length 192" in capsys.readouterr().err


def test_data_help_imports_no_torch():
    code = ("import contextlib, io, json, sys\nfrom difflm.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    for argv in (['data', '--help'], ['data', 'make', '--help'], ['--help']):\n"
            "        try:\n            main(argv)\n        except SystemExit:\n            pass\n"
            "print(json.dumps([m for m in ('torch', 'transformers', 'numpy') if m in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and json.loads(done.stdout) == [], done.stderr
