"""Verifiable rewards (difflm.rewards): every task reward right / wrong / malformed on real task examples,
the REWARDS registry contract, user rewards by "module:function", one-line errors for every bad reward,
group-relative advantages, and a torch-free import."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from difflm.errors import ConfigError, InputError
from difflm.registry import REWARDS
from difflm.rewards import RewardSet, group_advantages, load_reward, score_group
from difflm.rewards import tasks as rt
from difflm.tasks import make_examples
from difflm.tasks.countdown import countdown_prompt
from difflm.tasks.formatting import GSM_PROMPT
from difflm.tasks.sudoku import format_grid, sudoku_prompt, sudoku_response


@pytest.fixture(scope="module")
def gsm():
    return make_examples("gsm", 6, seed=1, split="test")


@pytest.fixture(scope="module")
def sudoku():
    return make_examples("sudoku", 3, seed=1, split="test", blanks="20-30")


@pytest.fixture(scope="module")
def countdown():
    return make_examples("countdown", 6, seed=1, split="test")


def _final(answer: str) -> int:
    return int(answer.split("####")[-1])


# -- gsm --------------------------------------------------------------------------------------------------
def test_gsm_rewards_right_wrong_malformed(gsm):
    for record in gsm:
        prompt, right = GSM_PROMPT.format(question=record["question"]), " " + record["answer"]
        wrong = right.rsplit("####", 1)[0] + f"#### {_final(record['answer']) + 1}"
        assert rt.gsm_correct(prompt, right, **record) == 1.0 and rt.gsm_format(prompt, right, **record) == 1.0
        assert rt.gsm_correct(prompt, wrong, **record) == 0.0 and rt.gsm_format(prompt, wrong, **record) == 1.0
        for malformed in ("", "I do not know.", "####", "#### lots"):
            assert rt.gsm_correct(prompt, malformed, **record) == 0.0
            assert rt.gsm_format(prompt, malformed, **record) == 0.0
    record = gsm[0]
    n = _final(record["answer"])
    # the evaluation's reading: cut at the next question, "1,000"-style numbers, else the last number
    assert rt.gsm_correct("", f" So {n}.\nQuestion: Tom has 3 more", **record) == 1.0
    assert rt.gsm_correct("", f" #### {n + 1}\nQuestion: #### {n}", **record) == 0.0
    assert rt.gsm_format("", f"#### {n}\nQuestion: x", **record) == 1.0
    assert rt.gsm_format("", f"text\nQuestion: x\n#### {n}", **record) == 0.0
    assert rt.gsm_correct("", "#### 1,250.00", answer="#### 1250") == 1.0


@pytest.mark.parametrize("text", [
    "so 3 + 4 = 7 apples. #### 7\nQuestion: next", "she pays $1,250.00 in total", "no number here", "#### -3.50",
    "#### x 12 then 13", "1\n\nQuestion: 2", "12.\nQuestion: 5\n\nQuestion: 6", "####"])
def test_gsm_extraction_is_the_gsm8k_evaluations(text):
    from difflm.tasks.gsm import extract_answer
    from difflm.evaluation.text_tasks import GSM8KTask

    cut = min((text.split(s)[0] for s in GSM8KTask.stop), key=len)
    assert rt.gsm_extract(text) == extract_answer(cut)


# -- sudoku -----------------------------------------------------------------------------------------------
def test_sudoku_rewards_right_wrong_malformed(sudoku):
    for record in sudoku:
        puzzle, solution = record["puzzle"], record["solution"]
        prompt, right = sudoku_prompt(puzzle), sudoku_response(solution)
        values = {name: REWARDS.get(name)(prompt, right, **record)
                  for name in ("sudoku_solved", "sudoku_valid", "sudoku_cells", "sudoku_format")}
        assert values == dict.fromkeys(values, 1.0)
        blanks = [i for i, c in enumerate(puzzle) if c == "0"]
        # two blank cells swapped between rows: still digits, no longer valid, 2 blanks wrong
        a = blanks[0]
        b = next(i for i in blanks if solution[i] != solution[a])
        cells = list(solution)
        cells[a], cells[b] = cells[b], cells[a]
        wrong = format_grid("".join(cells))
        assert rt.sudoku_solved(prompt, wrong, **record) == 0.0 and rt.sudoku_valid(prompt, wrong, **record) == 0.0
        assert rt.sudoku_cells(prompt, wrong, **record) == pytest.approx((len(blanks) - 2) / len(blanks))
        assert rt.sudoku_format(prompt, wrong, **record) == 1.0
        # the puzzle echoed back (blanks as X): the right shape, no credit
        echoed = format_grid(puzzle)
        assert rt.sudoku_format(prompt, echoed, **record) == 0.0 and rt.sudoku_cells(prompt, echoed, **record) == 0.0
        for malformed in ("", " 1 2 3", "Solution: none"):
            for name in ("sudoku_solved", "sudoku_valid", "sudoku_cells", "sudoku_format"):
                assert REWARDS.get(name)(prompt, malformed, **record) == 0.0
        # without a stored solution, partial credit is measured against the solver's
        assert rt.sudoku_cells(prompt, wrong, puzzle=puzzle) == rt.sudoku_cells(prompt, wrong, **record)


def test_sudoku_valid_grid_that_ignores_the_givens(sudoku):
    one, other = sudoku[0], sudoku[1]
    grid = sudoku_response(other["solution"])  # a valid grid, but another puzzle's
    assert rt.sudoku_valid("", grid, **one) == 1.0 and rt.sudoku_solved("", grid, **one) == 0.0


# -- countdown --------------------------------------------------------------------------------------------
def test_countdown_rewards_right_wrong_malformed(countdown):
    for record in countdown:
        prompt, right = countdown_prompt(record["numbers"], record["target"]), record["solution"]
        assert rt.countdown_solved(prompt, right, **record) == 1.0 and rt.countdown_format(prompt, right, **record) == 1.0
        lines = right.split("\n")
        x, rest = lines[-1].split(" = ")
        wrong = "\n".join(lines[:-1] + [f"{x} = {int(rest) + 1}"])  # the layout kept, the arithmetic wrong
        assert rt.countdown_solved(prompt, wrong, **record) == 0.0 and rt.countdown_format(prompt, wrong, **record) == 1.0
        for malformed in ("", "no idea", right + "\n1 + 1 = 2", right.replace("=", "->")):
            assert rt.countdown_solved(prompt, malformed, **record) == 0.0
            assert rt.countdown_format(prompt, malformed, **record) == 0.0


def test_countdown_any_valid_solution_counts_and_numbers_are_used_once():
    record = {"numbers": [3, 4, 5], "target": 35}
    assert rt.countdown_solved("", "3 + 4 = 7\n7 * 5 = 35", **record) == 1.0
    assert rt.countdown_solved("", "4 + 3 = 7\n5 * 7 = 35\n", **record) == 1.0
    assert rt.countdown_solved("", "3 + 4 = 7\n7 * 5 = 35\n", numbers=[3, 3, 5], target=35) == 0.0
    assert rt.countdown_solved("", "3 + 4 = 7\n7 * 4 = 28", numbers=[3, 4, 5], target=28) == 0.0


def test_correct_and_format_pick_the_task_from_the_fields(gsm, sudoku, countdown):
    for record, right in ((gsm[0], " " + gsm[0]["answer"]), (sudoku[0], sudoku_response(sudoku[0]["solution"])),
                          (countdown[0], countdown[0]["solution"])):
        assert rt.task_correct("p", right, **record) == 1.0 and rt.task_format("p", right, **record) == 1.0
        assert rt.task_correct("p", "nothing", **record) == 0.0 and rt.task_format("p", "nothing", **record) == 0.0
    with pytest.raises(InputError, match="knows gsm.*this one has prompt, response"):
        rt.task_correct("p", "x", prompt="p", response="r")  # the pair layout: no checker


def test_record_fields_named_like_the_arguments_do_not_collide(user_module):
    scores = score_group("p", ["abc", "a"], {"my_rewards:length": 1.0}, prompt="other", completion="c", response="r")
    assert scores.values["my_rewards:length"] == [0.3, 0.1]


# -- the registry contract --------------------------------------------------------------------------------
def test_every_registered_reward_loads_and_returns_a_float_in_its_range(gsm, sudoku, countdown):
    samples = {"gsm": [(r, GSM_PROMPT.format(question=r["question"]), " " + r["answer"]) for r in gsm[:2]],
               "sudoku": [(r, sudoku_prompt(r["puzzle"]), sudoku_response(r["solution"])) for r in sudoku[:2]],
               "countdown": [(r, countdown_prompt(r["numbers"], r["target"]), r["solution"]) for r in countdown[:2]]}
    assert set(REWARDS) >= {"correct", "format", "gsm_correct", "sudoku_solved", "countdown_solved"}
    for name in REWARDS:
        reward, (low, high) = REWARDS.get(name), REWARDS.entry(name).meta["range"]
        assert callable(reward) and load_reward(name) is reward
        task = name.split("_")[0]
        for record, prompt, right in sum(samples.values(), []) if task not in samples else samples[task]:
            for completion in (right, "", "garbage ####\n1 2 3"):
                value = reward(prompt, completion, **record)
                assert type(value) is float and math.isfinite(value) and low <= value <= high, (name, value)
            assert reward(prompt, right, **record) == high, name  # the stored answer earns full reward


def test_unknown_reward_and_bad_weights_are_config_errors():
    with pytest.raises(ConfigError, match="unknown reward 'corect'; choose one of correct, format"):
        RewardSet(["corect"])
    for bad in ("x", True, float("nan"), None):
        with pytest.raises(ConfigError, match="reward 'correct': its weight must be a finite number"):
            RewardSet({"correct": bad})
    with pytest.raises(ConfigError, match="no rewards given"):
        RewardSet({})


# -- user rewards by path ---------------------------------------------------------------------------------
@pytest.fixture()
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "import math\n"
        "def length(prompt, completion, **fields):\n    return len(completion) / 10\n"
        "def boom(prompt, completion, **fields):\n    raise KeyError('no such field')\n"
        "def nan(prompt, completion, **fields):\n    return math.nan\n"
        "def inf(prompt, completion, **fields):\n    return -math.inf\n"
        "def text(prompt, completion, **fields):\n    return 'high'\n"
        "def nothing(prompt, completion, **fields):\n    pass\n"
        "def flag(prompt, completion, **fields):\n    return completion.startswith('a')\n"
        "NOT_CALLABLE = 3\n")
    (tmp_path / "broken_rewards.py").write_text("import not_a_module_xyz\n")
    (tmp_path / "raising_rewards.py").write_text("raise RuntimeError('bad\\nconfig')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in ("my_rewards", "broken_rewards", "raising_rewards"):
        sys.modules.pop(name, None)


def test_user_reward_by_module_path(user_module, gsm):
    scores = RewardSet({"my_rewards:length": 0.5, "correct": 2.0}).score_group(
        "Question: x", ["abcd", " " + gsm[0]["answer"]], **gsm[0])
    assert scores.values["my_rewards:length"] == [0.4, (len(gsm[0]["answer"]) + 1) / 10]
    assert scores.values["correct"] == [0.0, 1.0]
    assert scores.totals == pytest.approx([0.2, 0.5 * scores.values["my_rewards:length"][1] + 2.0])
    assert scores.means()["reward/correct"] == 0.5 and scores.means()["reward"] == pytest.approx(sum(scores.totals) / 2)


@pytest.mark.parametrize("path,message", [
    ("no_such_module_q:f", "reward 'no_such_module_q:f': no module named 'no_such_module_q'; is it on PYTHONPATH?"),
    ("broken_rewards:f", "no module named 'not_a_module_xyz' (imported by broken_rewards)"),
    ("raising_rewards:f", "importing 'raising_rewards' raised RuntimeError: bad config"),
    ("my_rewards:missing", "module 'my_rewards' has no attribute 'missing'"),
    ("my_rewards:NOT_CALLABLE", "reward 'my_rewards:NOT_CALLABLE' is a int, not a function"),
    (":f", "write a user reward as 'module:function'"),
    ("my_rewards:", "write a user reward as 'module:function'"),
])
def test_user_reward_path_errors_are_one_line(user_module, path, message):
    with pytest.raises(ConfigError) as info:
        load_reward(path)
    assert message in str(info.value) and "\n" not in str(info.value)


# -- every bad reward: one line naming the prompt and the reward ------------------------------------------
PROMPT = "Question: Mia has 5 apples and buys 3 more.\nHow many apples does Mia have now?\nAnswer:"


@pytest.mark.parametrize("name,message", [
    ("my_rewards:boom", "raised KeyError: 'no such field'"),
    ("my_rewards:nan", "returned nan; a reward must be a finite number"),
    ("my_rewards:inf", "returned -inf; a reward must be a finite number"),
    ("my_rewards:text", "returned a str ('high'), not a number"),
    ("my_rewards:nothing", "returned a NoneType (None), not a number"),
    ("gsm_correct", "needs the example's 'answer' field"),
])
def test_a_bad_reward_is_one_line_naming_prompt_and_reward(user_module, name, message):
    with pytest.raises(InputError) as info:
        score_group(PROMPT, ["a", "b"], {name: 1.0, "my_rewards:length": 1.0}, question="q")
    text = str(info.value)
    assert "\n" not in text and message in text, text
    assert f"reward '{name}' on prompt 'Question: Mia has 5 apples and buys 3...'" in text


def test_bools_count_as_one_and_zero(user_module):
    assert score_group("p", ["abc", "xyz"], "my_rewards:flag").values["my_rewards:flag"] == [1.0, 0.0]


@pytest.mark.parametrize("completions,size", [(["only one"], 1), ([], 0), ("a string", 1)])
def test_a_group_of_fewer_than_two_is_refused(completions, size):
    with pytest.raises(InputError) as info:
        score_group(PROMPT, completions, ["correct", "format"], answer="#### 8")
    text = str(info.value)
    assert "\n" not in text and f"a group of {size} completion(s)" in text and "G >= 2" in text
    assert text.startswith("rewards correct, format on prompt 'Question: Mia")


def test_a_completion_that_is_not_text_is_refused():
    with pytest.raises(InputError, match="a completion is a list, not text"):
        score_group(PROMPT, ["8", [8]], "correct", answer="#### 8")


# -- group-relative advantages ----------------------------------------------------------------------------
def test_advantages_are_zero_mean_per_group_and_zero_for_a_constant_group():
    rewards = [[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5], [0.0, 0.0, 0.0, 3.0]]
    for scale in ("group", "batch", "none"):
        adv = group_advantages(rewards, scale=scale)
        assert [len(a) for a in adv] == [4, 4, 4]
        assert all(abs(sum(a)) < 1e-9 for a in adv)
        assert adv[1] == [0.0] * 4  # a constant group teaches nothing, and is not NaN
    group = group_advantages(rewards)[0]
    std = math.sqrt(sum((r - 0.5) ** 2 for r in rewards[0]) / 3)  # unbiased, torch's default
    assert group == pytest.approx([(r - 0.5) / (std + 1e-4) for r in rewards[0]])
    assert group_advantages(rewards, scale="none")[2] == [-0.75, -0.75, -0.75, 2.25]
    assert group_advantages([[0, 2]], eps=1.0)[0] == pytest.approx([-1 / (math.sqrt(2) + 1), 1 / (math.sqrt(2) + 1)])


def test_advantages_of_a_tensor_match_the_lists():
    import torch

    rewards = [[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5], [0.0, 0.0, 0.0, 3.0]]
    for scale in ("group", "batch", "none"):
        adv = group_advantages(torch.tensor(rewards), scale=scale)
        assert adv.shape == (3, 4) and torch.allclose(adv, torch.tensor(group_advantages(rewards, scale=scale)))
    assert group_advantages(torch.tensor([[1, 1], [0, 2]])).dtype == torch.float32
    with pytest.raises(InputError, match=r"G >= 2 .* got shape \(3, 1\)"):
        group_advantages(torch.ones(3, 1))
    with pytest.raises(InputError, match="NaN or inf"):
        group_advantages(torch.tensor([[1.0, float("nan")]]))


def test_advantages_refuse_bad_input():
    with pytest.raises(InputError, match=r"group sizes \[2, 1\]"):
        group_advantages([[1, 2], [3]])
    with pytest.raises(InputError, match="NaN or inf"):
        group_advantages([[1, math.inf]])
    with pytest.raises(ConfigError, match="scale must be one of group, batch, none"):
        group_advantages([[1, 2]], scale="std")
    with pytest.raises(ConfigError, match="eps must be a positive number"):
        group_advantages([[1, 2]], eps=0)


def test_rewards_import_without_torch():
    code = ("import sys, difflm.rewards, difflm.registry as r; [r.REWARDS.get(n) for n in r.REWARDS]; "
            "bad = [m for m in ('torch', 'numpy', 'transformers') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
