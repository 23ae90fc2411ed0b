"""GSM8K-style multi-step arithmetic word problems with a chain-of-thought answer.

Records are in GSM8K's own layout, ``{"question": ..., "answer": ...}``, the answer's lines the
reasoning, one arithmetic step per line, and its last line ``#### <integer>``; ``difflm eval --tasks
gsm8k=FILE`` scores them as it scores GSM8K (the model is prompted "Question: ...\\nAnswer:").

Two kinds of problem, chosen at random:

* a chain: one person's count of something changes step by step (buys, gives away, doubles, shares
  equally, buys packs of several); "How many ... now?"
* a comparison: each person has some more, fewer, times as many or a fraction of the previous
  one's; "How many ... altogether?"

Difficulty knobs: ``steps`` (arithmetic steps = lines of reasoning before the answer) and
``numbers`` (the range operands are drawn from). Every intermediate value is a whole number in
[0, 999]. A format knob, ``sums``, changes the reasoning only (the questions, answers and splits stay
the same): "whole" (default) writes a comparison's total as one sum, "17 + 13 + 6 = 36"; "pairwise"
adds one term at a time, "17 + 13 = 30, 30 + 6 = 36" (finer steps for training data). A problem's
key - what makes two problems the same for the train/test split - is its arithmetic (kind, values,
operations), not its names or objects.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable

from ..errors import InputError
from ..registry import GSM_SUMS
from .generators import TaskGenerator

MAX_VALUE = 999
SUMS = GSM_SUMS  # how the reasoning writes a total: `difflm data make gsm --sums` offers the same table
NAMES = [("Mia", "she"), ("Tom", "he"), ("Ava", "she"), ("Leo", "he"), ("Zoe", "she"), ("Sam", "he"),
         ("Lily", "she"), ("Ben", "he"), ("Emma", "she"), ("Noah", "he"), ("Ruth", "she"), ("Jack", "he"),
         ("Nora", "she"), ("Omar", "he"), ("Ella", "she"), ("Ivan", "he"), ("Grace", "she"), ("Luis", "he"),
         ("Hana", "she"), ("Paul", "he"), ("Sara", "she"), ("Owen", "he"), ("Lucy", "she"), ("Adam", "he")]
ITEMS = ["apples", "marbles", "stickers", "books", "pencils", "cookies", "cards", "coins", "shells", "stamps",
         "flowers", "eggs", "beads", "candles", "buttons", "ribbons", "crayons", "oranges", "plums", "rocks",
         "feathers", "toy cars", "paper cranes", "seashells", "tickets", "muffins", "balloons", "nuts"]
CONTAINERS = ["bags", "boxes", "packs", "jars", "baskets", "crates"]
_OBJECT = {"she": "her", "he": "him"}
_POSSESSIVE = {"she": "her", "he": "his"}
_REFLEXIVE = {"she": "herself", "he": "himself"}
_MULTIPLIED = {2: "doubles", 3: "triples", 4: "quadruples"}
_TIMES = {2: "twice", 3: "three times", 4: "four times", 5: "five times"}
_FRACTION = {2: "half", 3: "a third", 4: "a quarter"}


@dataclass(frozen=True)
class GSMSettings:
    """steps: (low, high) arithmetic steps per problem, drawn uniformly; numbers: (low, high) range
    of the numbers in a problem (start values and operands; factors and divisors stay in 2..5);
    sums: how the reasoning writes a total of several terms, "whole" or "pairwise"."""

    steps: tuple[int, int] = (2, 4)
    numbers: tuple[int, int] = (2, 20)
    sums: str = "whole"

    def __post_init__(self) -> None:
        lo, hi = self.steps
        if not 1 <= lo <= hi <= 8:
            raise InputError(f"steps must lie in 1..8 (low <= high), got {lo}-{hi}")
        lo, hi = self.numbers
        if not 1 <= lo < hi <= 200:
            raise InputError(f"numbers must lie in 1..200 (low < high), got {lo}-{hi}")
        if self.sums not in SUMS:
            raise InputError(f"sums must be one of {', '.join(SUMS)}, got {self.sums!r}")


@dataclass
class _Problem:
    sentences: list[str]
    lines: list[str]
    key: list[str]
    steps: int = 0


def _pick(rng: random.Random, options: list[str]) -> str:
    return options[rng.randrange(len(options))]


def _chain(rng: random.Random, s: GSMSettings, steps: int) -> _Problem | None:
    """One person's count, changed step by step."""
    lo, hi = s.numbers
    name, pron = NAMES[rng.randrange(len(NAMES))]
    other = _pick(rng, [n for n, _ in NAMES if n != name])
    item = _pick(rng, ITEMS)
    value = rng.randint(lo, hi)
    Pron, obj, poss = pron.capitalize(), _OBJECT[pron], _POSSESSIVE[pron]
    p = _Problem([f"{name} has {value} {item}."], [f"{name} starts with {value} {item}."], ["chain", str(value)])
    while p.steps < steps:
        def add() -> int | None:
            n = rng.randint(lo, hi)
            if value + n > MAX_VALUE:
                return None
            p.sentences.append(_pick(rng, [f"{Pron} buys {n} more {item}.", f"{other} gives {obj} {n} {item}.",
                                            f"{Pron} finds {n} more {item}."]))
            p.lines.append(f"{Pron} gets {n} more, so {pron} has {value} + {n} = {value + n} {item}.")
            p.key.append(f"+{n}")
            return value + n

        def sub() -> int | None:
            if value < 2:
                return None
            n = rng.randint(min(lo, value - 1), min(hi, value - 1))
            p.sentences.append(_pick(rng, [f"{Pron} gives {n} {item} to {other}.", f"{Pron} sells {n} of {poss} {item}.",
                                            f"{Pron} loses {n} {item}."]))
            p.lines.append(f"{Pron} gives up {n}, so {pron} has {value} - {n} = {value - n} {item}.")
            p.key.append(f"-{n}")
            return value - n

        def mul() -> int | None:
            k = rng.randint(2, 4)
            if value * k > MAX_VALUE:
                return None
            p.sentences.append(f"Then {pron} {_MULTIPLIED[k]} the number of {item} {pron} has.")
            p.lines.append(f"{Pron} {_MULTIPLIED[k]} them, so {pron} has {value} * {k} = {value * k} {item}.")
            p.key.append(f"*{k}")
            return value * k

        def div() -> int | None:
            divisors = [k for k in range(2, 6) if value % k == 0 and value // k >= 1]
            if not divisors:
                return None
            k = _pick(rng, divisors)
            p.sentences.append(f"{Pron} shares the {item} equally among {k} people, {_REFLEXIVE[pron]} included, "
                               f"and keeps {poss} share.")
            p.lines.append(f"Each share is {value} / {k} = {value // k} {item}, so {pron} keeps {value // k}.")
            p.key.append(f"/{k}")
            return value // k

        def packs() -> int | None:
            if steps - p.steps < 2:
                return None
            a, b = rng.randint(2, 5), rng.randint(lo, hi)
            if value + a * b > MAX_VALUE:
                return None
            box = _pick(rng, CONTAINERS)
            p.sentences.append(f"{Pron} buys {a} {box} with {b} {item} in each.")
            p.lines.append(f"The {box} hold {a} * {b} = {a * b} {item}.")
            p.lines.append(f"Now {pron} has {value} + {a * b} = {value + a * b} {item}.")
            p.key.append(f"+{a}*{b}")
            p.steps += 1  # two lines of reasoning
            return value + a * b

        ops: list[Callable[[], int | None]] = [add, sub, mul, div, packs]
        for op in rng.sample(ops, len(ops)):
            new = op()
            if new is not None:
                value = new
                p.steps += 1
                break
    p.sentences.append(_pick(rng, [f"How many {item} does {name} have now?",
                                   f"How many {item} does {name} have at the end?"]))
    p.lines.append(f"#### {value}")
    return p


def _compare(rng: random.Random, s: GSMSettings, steps: int) -> _Problem | None:
    """People each having some relation to the previous one; the total."""
    lo, hi = s.numbers
    people = rng.sample(NAMES, steps)  # steps - 1 relations, then the sum
    item = _pick(rng, ITEMS)
    value = rng.randint(lo, hi)
    first = people[0][0]
    p = _Problem([f"{first} has {value} {item}."], [], ["compare", str(value)])
    values = [value]
    for (name, _), (prev, _) in zip(people[1:], people):
        choices = ["more", "fewer", "times", "fraction"]
        rng.shuffle(choices)
        for kind in choices:
            if kind == "more":
                n = rng.randint(lo, hi)
                new, say, line = value + n, f"{name} has {n} more {item} than {prev}.", f"{value} + {n}"
            elif kind == "fewer" and value > 1:
                n = rng.randint(min(lo, value - 1), min(hi, value - 1))
                new, say, line = value - n, f"{name} has {n} fewer {item} than {prev}.", f"{value} - {n}"
            elif kind == "times":
                n = rng.randint(2, 5)
                new, say, line = value * n, f"{name} has {_TIMES[n]} as many {item} as {prev}.", f"{value} * {n}"
            elif kind == "fraction":
                divisors = [k for k in (2, 3, 4) if value % k == 0]
                if not divisors:
                    continue
                n = _pick(rng, divisors)
                new, say, line = value // n, f"{name} has {_FRACTION[n]} as many {item} as {prev}.", f"{value} / {n}"
            else:
                continue
            if 0 < new <= MAX_VALUE:
                break
        else:
            return None
        p.sentences.append(say)
        p.lines.append(f"{name} has {line} = {new} {item}.")
        p.key.append(f"{kind}:{line}")
        values.append(new)
        value = new
    total = sum(values)
    if total > MAX_VALUE:
        return None
    names = [n for n, _ in people]
    together = ", ".join(names[:-1]) + f" and {names[-1]}"
    p.sentences.append(f"How many {item} do {together} have altogether?")
    p.lines.append(f"Altogether they have {_total(values, s.sums)} {item}.")
    p.lines.append(f"#### {total}")
    p.steps = len(values)  # relations + the sum
    return p


def _total(values: list[int], sums: str) -> str:
    """The sum of ``values`` as the reasoning writes it: "a + b + c = t" (whole) or
    "a + b = s, s + c = t" (pairwise)."""
    if sums == "whole":
        return f"{' + '.join(map(str, values))} = {sum(values)}"
    steps, running = [], values[0]
    for v in values[1:]:
        steps.append(f"{running} + {v} = {running + v}")
        running += v
    return ", ".join(steps)


def generate_gsm(rng: random.Random, settings: GSMSettings, accept) -> tuple[str, dict[str, str]]:
    """One (key, record) whose key ``accept`` keeps (the split filter)."""
    while True:
        steps = rng.randint(*settings.steps)
        kind = _compare if steps >= 2 and rng.random() < 0.35 else _chain
        problem = kind(rng, settings, steps)
        if problem is None:
            continue
        key = "|".join(problem.key)
        if not accept(key):
            continue
        return key, {"question": " ".join(problem.sentences), "answer": "\n".join(problem.lines)}


# what `difflm data make gsm` runs (difflm.registry.DATA_TASKS)
GENERATOR = TaskGenerator(GSMSettings, generate_gsm)


# -- reading an answer: the gsm8k evaluation's metric and the RL reward (difflm.evaluation.metrics, difflm.rewards)
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def canonical_number(text: str) -> str:
    """A number as one canonical string ("1,000", "1000.0", "$1000" -> "1000"); text that is no number as given."""
    text = text.replace(",", "").replace("$", "").strip().rstrip(".")
    try:
        value = float(text)
    except ValueError:
        return text
    return str(int(value)) if value.is_integer() else repr(value)


def extract_answer(generation: str) -> str | None:
    """The final answer of a GSM8K-style generation: the number after the first '####' if there is
    one, else the last number in the text; None when there is no number."""
    if "####" in generation:
        found = NUMBER.search(generation.split("####", 1)[1])
        if found:
            return canonical_number(found.group())
    numbers = NUMBER.findall(generation)
    return canonical_number(numbers[-1]) if numbers else None


def numbers_match(prediction: str | None, reference: str) -> bool:
    """Exact match of two numbers written differently ("1,000", "1000.0", "$1000")."""
    return prediction is not None and canonical_number(prediction) == canonical_number(reference)
