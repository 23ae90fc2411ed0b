"""Benchmark data from local files, in each benchmark's usual layout, turned into a few example types.

Nothing is downloaded: point a loader at the JSONL (or CSV) file you have. A malformed line is an
`InputError` that names the file and the line.

| loader          | layout (one JSON object per line unless noted)                                   |
|-----------------|-----------------------------------------------------------------------------------|
| lambada         | {"text"}: the passage; the target is its last word                                |
| hellaswag       | {"ctx" or "ctx_a"+"ctx_b", "activity_label"?, "endings": [4], "label"}             |
| piqa            | {"goal", "sol1", "sol2", "label"}                                                 |
| siqa            | {"context", "question", "answerA", "answerB", "answerC", "label": "1".."3"}       |
| winogrande      | {"sentence" with one "_", "option1", "option2", "answer": "1" or "2"}             |
| rocstories      | {"sentence1".."sentence5"} or {"sentences": [5]}, or the ROCStories CSV           |
| gsm8k           | {"question", "answer": "... #### 42"}                                             |
| choice (difflm) | {"context", "choices": [...], "label"}                                            |
| last-word       | {"context", "target"}                                                             |
| infilling       | {"prefix", "middle", "suffix"}                                                    |
| text            | a .txt file (one document) or {"text"} lines                                      |
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import InputError
from ..io import open_text, read_jsonl, require_file  # read_jsonl: the one JSONL reader (also imported from here)


@dataclass(frozen=True)
class LastWordExample:
    """Predict ``target`` (one word, no surrounding space) after ``context`` + " "."""

    context: str
    target: str


@dataclass(frozen=True)
class ChoiceExample:
    """Option i is the text contexts[i] + continuations[i]; its score is -log p(continuation | context).
    Most benchmarks share the context and vary the continuation; Winogrande (partial scoring) varies the
    context and shares the continuation."""

    contexts: tuple[str, ...]
    continuations: tuple[str, ...]
    label: int


@dataclass(frozen=True)
class InfillExample:
    """Generate ``middle`` between ``prefix`` and ``suffix`` (exact concatenation is the original text)."""

    prefix: str
    middle: str
    suffix: str


@dataclass(frozen=True)
class QAExample:
    """A question and its final answer (GSM8K: the number after '####')."""

    question: str
    answer: str


def _loader(fields: tuple[str, ...], build: Callable[[dict[str, Any]], Any]) -> Callable[[str | os.PathLike], list[Any]]:
    """A loader that checks ``fields`` on every line and turns each object into an example."""

    def load(path: str | os.PathLike) -> list[Any]:
        out = []
        for lineno, obj in read_jsonl(path):
            missing = [f for f in fields if f not in obj]
            if missing:
                raise InputError(f"{path}:{lineno}: missing field(s) {', '.join(missing)} (this layout needs {', '.join(fields)})")
            try:
                out.append(build(obj))
            except (KeyError, ValueError, TypeError, IndexError) as exc:
                raise InputError(f"{path}:{lineno}: malformed example ({type(exc).__name__}: {exc})") from None
        if not out:
            raise InputError(f"{path}: no examples")
        return out

    return load


def _label(value: Any, n: int, *, base: int = 0) -> int:
    label = int(value) - base
    if not 0 <= label < n:
        raise ValueError(f"label {value!r} is not one of the {n} options")
    return label


def _shared_context(context: str, choices: list[str], label: Any, base: int = 0) -> ChoiceExample:
    if len(choices) < 2:
        raise ValueError("a multiple-choice example needs at least two choices")
    return ChoiceExample((context,) * len(choices), tuple(choices), _label(label, len(choices), base=base))


# -- benchmark layouts --------------------------------------------------------------------------
def _lambada(obj: dict[str, Any]) -> LastWordExample:
    text = str(obj["text"]).strip()
    context, _, target = text.rpartition(" ")
    if not context or not target:
        raise ValueError("the text needs at least two words")
    return LastWordExample(context, target)


def _hellaswag_clean(text: str) -> str:
    # WikiHow artefacts of HellaSwag, cleaned as lm-evaluation-harness does.
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def _hellaswag(obj: dict[str, Any]) -> ChoiceExample:
    ctx = obj["ctx"] if "ctx" in obj else obj["ctx_a"] + " " + obj["ctx_b"].capitalize()
    query = _hellaswag_clean((obj["activity_label"] + ": " if obj.get("activity_label") else "") + ctx)
    return _shared_context(query, [" " + _hellaswag_clean(e) for e in obj["endings"]], obj["label"])


def _winogrande(obj: dict[str, Any]) -> ChoiceExample:
    sentence = obj["sentence"]
    idx = sentence.index("_")
    suffix = " " + sentence[idx + 1 :].strip()
    options = (obj["option1"], obj["option2"])
    return ChoiceExample(tuple(sentence[:idx] + o for o in options), (suffix, suffix), _label(obj["answer"], 2, base=1))


def _rocstories(obj: dict[str, Any]) -> InfillExample:
    sentences = obj["sentences"] if "sentences" in obj else [obj[f"sentence{i}"] for i in range(1, 6)]
    if len(sentences) != 5:
        raise ValueError(f"a story has 5 sentences, got {len(sentences)}")
    s = [str(x).strip() for x in sentences]
    return InfillExample(s[0] + " " + s[1], " " + s[2], " " + s[3] + " " + s[4])


def gsm8k_final_answer(answer: str) -> str:
    """The number after '####' in a GSM8K answer, without thousands separators."""
    if "####" not in answer:
        raise ValueError("the answer has no '#### <number>' line")
    return answer.split("####")[-1].strip().replace(",", "")


load_lambada = _loader(("text",), _lambada)
load_hellaswag = _loader(("endings", "label"), _hellaswag)
load_piqa = _loader(("goal", "sol1", "sol2", "label"), lambda o: _shared_context(
    f"Question: {o['goal']}\nAnswer:", [" " + o["sol1"], " " + o["sol2"]], o["label"]))
load_siqa = _loader(("context", "question", "answerA", "answerB", "answerC", "label"), lambda o: _shared_context(
    f"Question: {o['context']} {o['question']}\nAnswer:", [" " + o[k] for k in ("answerA", "answerB", "answerC")],
    o["label"], base=1))
load_winogrande = _loader(("sentence", "option1", "option2", "answer"), _winogrande)
load_gsm8k = _loader(("question", "answer"), lambda o: QAExample(o["question"].strip(), gsm8k_final_answer(o["answer"])))
load_choice = _loader(("context", "choices", "label"), lambda o: _shared_context(o["context"], list(o["choices"]), o["label"]))
load_last_word = _loader(("context", "target"), lambda o: LastWordExample(o["context"], o["target"].strip()))
load_infilling = _loader(("prefix", "middle", "suffix"), lambda o: InfillExample(o["prefix"], o["middle"], o["suffix"]))
_load_rocstories_jsonl = _loader((), _rocstories)


def load_rocstories(path: str | os.PathLike) -> list[InfillExample]:
    """ROCStories as JSONL, or the original CSV (columns sentence1..sentence5, or the Story Cloze layout
    InputSentence1..4 + the right ending): the third sentence is the one to fill in."""
    p = require_file(path)
    if p.suffix != ".csv":
        return _load_rocstories_jsonl(p)
    out = []
    with p.open(encoding="utf-8", newline="") as handle:
        for lineno, row in enumerate(csv.DictReader(handle), 2):
            try:
                if "sentence1" in row:
                    sentences = [row[f"sentence{i}"] for i in range(1, 6)]
                else:
                    right = row["AnswerRightEnding"].strip()
                    sentences = [row[f"InputSentence{i}"] for i in range(1, 5)] + [row[f"RandomFifthSentenceQuiz{right}"]]
            except KeyError as exc:
                raise InputError(f"{p}:{lineno}: missing column {exc}; expected sentence1..5 or the Story Cloze columns") from None
            out.append(_rocstories({"sentences": sentences}))
    if not out:
        raise InputError(f"{p}: no examples")
    return out


def load_texts(path: str | os.PathLike) -> list[str]:
    """Documents to score: a plain text file is one document; JSONL gives one per {"text"} line."""
    p = require_file(path)
    if p.name.endswith((".jsonl", ".jsonl.gz")):
        return [str(o["text"]) for o in _loader(("text",), lambda o: o)(p)]
    with open_text(p) as handle:
        text = handle.read()
    if not text.strip():
        raise InputError(f"{p}: the file is empty")
    return [text]
