"""Benchmark loaders, metrics, protocols and the bundled held-out task sets."""

import gzip
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from difflm.bundled import BUNDLED_DIR
from difflm.errors import InputError
from difflm.evaluation import EvalSettings, build_task, load_eval_lm, parse_tasks
from difflm.evaluation import EvalLM, data
from difflm.evaluation.metrics import rouge
from difflm.tasks.gsm import extract_answer, numbers_match
from difflm.evaluation.text_tasks import GSM8KTask, MultipleChoiceTask
from evaluation_fixtures import bundled_tokenizer, model_dirs  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[1]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# -- loaders ----------------------------------------------------------------------------------------
def test_benchmark_layouts_load_into_examples(tmp_path):
    hs = data.load_hellaswag(write_jsonl(tmp_path / "hs.jsonl", [
        {"activity_label": "Baking", "ctx_a": "She mixes flour.", "ctx_b": "then she", "endings": ["bakes [title] it.", "runs", "b", "c"], "label": "0"}]))
    assert hs[0].contexts[0] == "Baking: She mixes flour. Then she" and hs[0].continuations[0] == " bakes. it."
    assert hs[0].label == 0 and len(hs[0].continuations) == 4
    piqa = data.load_piqa(write_jsonl(tmp_path / "piqa.jsonl", [{"goal": "Open a jar", "sol1": "twist", "sol2": "kick", "label": 1}]))
    assert piqa[0].contexts == ("Question: Open a jar\nAnswer:",) * 2 and piqa[0].label == 1
    siqa = data.load_siqa(write_jsonl(tmp_path / "siqa.jsonl", [
        {"context": "Kai slept.", "question": "Why?", "answerA": "tired", "answerB": "bored", "answerC": "hungry", "label": "3"}]))
    assert siqa[0].label == 2 and siqa[0].continuations == (" tired", " bored", " hungry")
    wino = data.load_winogrande(write_jsonl(tmp_path / "w.jsonl", [
        {"sentence": "The cup fell off the table because _ was tilted.", "option1": "the cup", "option2": "the table", "answer": "2"}]))
    assert wino[0].contexts == ("The cup fell off the table because the cup", "The cup fell off the table because the table")
    assert wino[0].continuations == (" was tilted.",) * 2 and wino[0].label == 1
    lamb = data.load_lambada(write_jsonl(tmp_path / "l.jsonl", [{"text": "he opened the door"}]))
    assert lamb[0] == data.LastWordExample("he opened the", "door")
    gsm = data.load_gsm8k(write_jsonl(tmp_path / "g.jsonl", [{"question": "2+2?", "answer": "It is 4.\n#### 1,004"}]))
    assert gsm[0].answer == "1004"
    story = ["A went out.", "It rained.", "A got wet.", "A went home.", "A dried off."]
    roc = data.load_rocstories(write_jsonl(tmp_path / "r.jsonl", [{f"sentence{i + 1}": s for i, s in enumerate(story)}]))
    assert roc[0].prefix + roc[0].middle + roc[0].suffix == " ".join(story) and roc[0].middle == " A got wet."
    csv_path = tmp_path / "roc.csv"
    csv_path.write_text("storyid,storytitle,sentence1,sentence2,sentence3,sentence4,sentence5\n1,t," + ",".join(story) + "\n")
    assert data.load_rocstories(csv_path) == roc


def test_malformed_lines_name_the_file_and_line(tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"goal": "g", "sol1": "a", "sol2": "b", "label": 0}, "{not json"])
    with pytest.raises(InputError, match=r"bad\.jsonl:2: not valid JSON"):
        data.load_piqa(bad)
    missing = write_jsonl(tmp_path / "m.jsonl", [{"goal": "g", "sol1": "a", "sol2": "b", "label": 0}, {"goal": "g"}])
    with pytest.raises(InputError, match=r"m\.jsonl:2: missing field\(s\) sol1, sol2, label"):
        data.load_piqa(missing)
    label = write_jsonl(tmp_path / "lab.jsonl", [{"goal": "g", "sol1": "a", "sol2": "b", "label": 5}])
    with pytest.raises(InputError, match=r"lab\.jsonl:1: malformed example"):
        data.load_piqa(label)
    with pytest.raises(InputError, match="no such file"):
        data.load_gsm8k(tmp_path / "absent.jsonl")


# -- metrics ----------------------------------------------------------------------------------------
def test_rouge_agrees_with_the_rouge_score_package():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    pairs = [("the cat sat on the mat", "the cat lay on a mat"), ("And God said, let there be light!", "God said: light"),
             ("", "something"), ("a b c d", "d c b a")]
    for prediction, reference in pairs:
        ours, theirs = rouge(prediction, reference), scorer.score(reference, prediction)
        for name in ours:
            assert ours[name] == pytest.approx(theirs[name].fmeasure, abs=1e-9), (prediction, name)


def test_gsm8k_answer_extraction():
    assert extract_answer("so 3 + 4 = 7 apples. #### 7\nQuestion: next") == "7"
    assert extract_answer("she pays $1,250.00 in total") == "1250"
    assert extract_answer("no number here") is None
    assert numbers_match("1250", "1,250") and not numbers_match("125", "1250") and not numbers_match(None, "1")


# -- protocols on tiny random models ----------------------------------------------------------------
@pytest.fixture(scope="module")
def lms(model_dirs):  # noqa: F811
    settings = EvalSettings(n_samples=4, limit=4, progress=False, batch_size=8, max_new_tokens=6, reference_steps=4)
    return {kind: load_eval_lm(path, settings) for kind, path in model_dirs.items()}


def test_bundled_tasks_run_on_ar_models_and_dlms(lms):
    for kind, lm in lms.items():
        for task in parse_tasks("perplexity,last-word,multiple-choice,infilling"):
            result = task.run(lm)
            assert result.n_examples == 4 and result.samples
            for metric in result.metrics.values():
                assert metric.n > 0 and metric.stderr >= 0
            if task.name == "perplexity":
                per_token = result.metrics["nll_per_token"]
                # a random model over 8192 tokens is close to uniform: about log(8192) nats per token
                assert 8.0 < per_token.value < 10.0
                assert per_token.stderr_source == ("exact" if kind == "ar" else "monte-carlo")
                assert (per_token.stderr == 0) == (kind == "ar")
            if task.name == "multiple-choice":
                assert ("acc_ref" in result.metrics) == (kind == "dlm")
            if task.name == "infilling":
                assert result.protocol["context"].startswith("prefix only" if kind == "ar" else "prefix and suffix")


def test_multiple_choice_picks_the_most_likely_continuation(lms):
    # Options that repeat the context are far more likely under any model than random words; with the
    # AR model scored exactly, "acc" must follow the lowest NLL, and "acc_norm" the lowest NLL per byte.
    lm = lms["ar"]
    ex = data.ChoiceExample(("a b",) * 2, (" zq xv", " zq xv zq xv"), 0)
    outcome = MultipleChoiceTask("t", [ex]).evaluate(lm, [ex])
    nll = outcome.samples[0]["nll"]
    assert outcome.metrics["acc"].value == float(nll[0] < nll[1])
    assert outcome.metrics["acc_norm"].value == float(nll[0] / 6 < nll[1] / 12)


class ScriptedLM(EvalLM):
    """Answers each prompt with a fixed text: the protocol around the model is all that is tested."""

    kind = "ar"
    max_length = None

    def __init__(self, script: dict[str, str], settings: EvalSettings):
        super().__init__(torch.nn.Identity(), bundled_tokenizer(), settings)
        self.script, self.calls = script, []

    def generate(self, prompts, max_new_tokens):
        self.calls.append(([self.tokenizer.decode(p) for p in prompts], [p[: len(self.bos)] for p in prompts],
                           max_new_tokens))
        return [self.encode(self.script[self.tokenizer.decode(p[len(self.bos):])]) for p in prompts]

    def nll(self, requests, keys=None):
        raise NotImplementedError

    def fill(self, prefixes, suffixes, length):
        raise NotImplementedError

    def greedy_matches(self, requests):
        raise NotImplementedError


def test_gsm8k_protocol_extracts_and_scores_the_answers():
    cases = [  # question, reference answer, the model's generation, what must be extracted
        ("What is 2 + 2?", "4", " 2 + 2 = 4.\n#### 4\n\nQuestion: What is 3 + 3?\nAnswer: 6", "4"),
        ("Tom has 3 apples and buys 4 more. How many?", "7", " He has 3 + 4 = 8 apples.\n#### 8", "8"),  # wrong
        ("What is 10 times 125?", "1250", " 10 x 125 = 1,250 in total.", "1250"),  # no ####: the last number
        ("What is 6 minus 1?", "5", " It is 4.\nQuestion: What is 2 + 3?\nAnswer: 5", "4"),  # cut at the next question
        ("How many legs has a cat?", "4", " A cat has legs.", None),  # no number: wrong
    ]
    script = {f"Question: {q}\nAnswer:": g for q, _, g, _ in cases}
    lm = ScriptedLM(script, EvalSettings(max_new_tokens=7, progress=False))
    examples = [data.QAExample(q, a) for q, a, _, _ in cases]
    result = GSM8KTask("gsm8k", examples).run(lm)
    ((prompts, starts, budget),) = lm.calls
    assert prompts == [lm.tokenizer.decode(lm.bos) + p for p in script] and budget == 7  # zero-shot prompts, BOS first
    assert starts == [lm.bos] * len(cases)
    assert [s["extracted"] for s in result.samples] == [e for _, _, _, e in cases]
    assert result.samples[0]["generation"] == " 2 + 2 = 4.\n#### 4" and result.samples[3]["generation"] == " It is 4."
    em = result.metrics["exact_match"]
    assert em.value == pytest.approx(2 / 5) and em.n == 5
    assert em.stderr == pytest.approx(math.sqrt((2 * 0.6**2 + 3 * 0.4**2) / 4 / 5))  # std(ddof=1) / sqrt(n)
    # every answer wrong: 0; every answer right: 1
    wrong = ScriptedLM({p: " #### 999" for p in script}, EvalSettings(max_new_tokens=7, progress=False))
    assert GSM8KTask("gsm8k", examples).run(wrong).metrics["exact_match"].value == 0.0
    right = ScriptedLM({f"Question: {q}\nAnswer:": f" so #### {a}" for q, a, _, _ in cases},
                       EvalSettings(max_new_tokens=7, progress=False))
    assert GSM8KTask("gsm8k", examples).run(right).metrics["exact_match"].value == 1.0


def test_dlm_sampler_options_are_built_once_and_validated_at_load(model_dirs, monkeypatch):  # noqa: F811
    from difflm import sampling
    from difflm.sampling import SamplerOptions

    with pytest.raises(InputError, match="unknown strategy 'nope'"):  # before any task runs
        load_eval_lm(model_dirs["dlm"], EvalSettings(strategy="nope", progress=False))
    lm = load_eval_lm(model_dirs["dlm"], EvalSettings(steps=4, block_length=2, strategy="entropy", progress=False))
    assert lm.sampler_options == SamplerOptions(steps=4, strategy="entropy", block_length=2)
    seen = []
    real_generate, real_infill = sampling.generate, sampling.infill

    def spy(fn):
        def call(*args, **kwargs):
            seen.append((kwargs["options"], kwargs["generator"].device.type, set(kwargs) & set(SamplerOptions.names())))
            return fn(*args, **kwargs)
        return call

    monkeypatch.setattr(sampling, "generate", spy(real_generate))
    monkeypatch.setattr(sampling, "infill", spy(real_infill))
    lm.generate([lm.bos + lm.encode("And God")], 4)
    lm.fill([lm.bos + lm.encode("And")], [lm.encode(" said")], 4)
    assert seen == [(lm.sampler_options, "cpu", set())] * 2  # one options object, no loose keyword options


def test_dlm_results_are_reproducible_and_depend_on_the_seed(model_dirs):  # noqa: F811
    def nll(seed):
        lm = load_eval_lm(model_dirs["dlm"], EvalSettings(n_samples=2, limit=3, seed=seed, progress=False))
        return build_task("perplexity").run(lm).metrics["nll_per_token"].value

    assert nll(0) == nll(0) and nll(0) != nll(1)


# -- the registry and the bundled sets -------------------------------------------------------------
def test_task_names_and_bad_specs(tmp_path):
    from difflm.evaluation import TASK_SPECS
    from difflm.formats import FORMATS
    from difflm.registry import EVAL_TASKS, FORMATS as FORMAT_NAMES

    assert EVAL_TASKS.names() == tuple(TASK_SPECS)
    assert FORMAT_NAMES.names() == tuple(FORMATS)
    with pytest.raises(InputError, match="unknown task 'lambda'"):
        parse_tasks("perplexity,lambda")
    with pytest.raises(InputError, match="needs a local data file: --tasks hellaswag=PATH"):
        parse_tasks("hellaswag")
    with pytest.raises(InputError, match="listed twice"):
        parse_tasks("last-word,last-word")
    text = tmp_path / "doc.txt"
    text.write_text("Some text to score.\n")
    assert [t.name for t in parse_tasks(f"perplexity,perplexity={text}")] == ["perplexity", "perplexity=doc.txt"]


def test_bundled_task_files_are_what_the_builder_makes(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "scripts" / "build_tasks.py"), "--out", str(tmp_path)], check=True,
                   capture_output=True)
    bundled = BUNDLED_DIR / "tasks"
    for name in ("perplexity", "last-word", "multiple-choice", "infilling", "README"):
        suffix = ".md" if name == "README" else ".jsonl"
        assert (tmp_path / f"{name}{suffix}").read_bytes() == (bundled / f"{name}{suffix}").read_bytes(), name


def corpus(split: str) -> list[dict]:
    with gzip.open(BUNDLED_DIR / "corpus" / f"{split}.jsonl.gz", "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def test_bundled_sets_are_well_formed_and_held_out():
    test, train = corpus("test"), corpus("train")
    # the splits are disjoint by document (titles are unique), so a test passage is not a training one
    assert not {d["title"] for d in test} & {d["title"] for d in train}
    sources = {d["source"] for d in test}
    test_text = {s: "\n\n".join(d["text"] for d in test if d["source"] == s) + "\n" for s in sources}
    test_lines = {s: set(t.splitlines()) for s, t in test_text.items()}
    train_text = "\n\n".join(d["text"] for d in train)

    def in_test(source: str, text: str) -> bool:
        return text in test_text[source]

    def rows(name: str) -> list[dict]:
        return [json.loads(line) for line in (BUNDLED_DIR / "tasks" / f"{name}.jsonl").read_text().splitlines()]

    # perplexity: passages of the test split, none of them in the training text
    passages = rows("perplexity")
    assert len(passages) == 60 and all(in_test(r["source"], r["text"]) for r in passages)
    assert not [r["text"][:60] for r in passages if r["text"] in train_text]

    # multiple choice: exactly one option continues the test passage - the labelled one, which ends its line
    mc, mc_rows = data.load_choice(BUNDLED_DIR / "tasks" / "multiple-choice.jsonl"), rows("multiple-choice")
    assert len(mc) == 150 and all(len(ex.continuations) == 4 for ex in mc)
    for ex, row in zip(mc, mc_rows):
        real = [i for i, c in enumerate(ex.continuations) if in_test(row["source"], ex.contexts[i] + c + "\n")]
        assert real == [ex.label], (ex.contexts[0][-60:], ex.continuations)
        assert ex.continuations.count(ex.continuations[ex.label]) == 1  # no distractor is the answer's text
        assert len(ex.continuations[ex.label].split()) == 4  # the line's last four words
    # scripts/build_tasks.py does not de-duplicate distractor texts: two questions repeat one (3 distinct options)
    assert sum(len(set(ex.continuations)) < 4 for ex in mc) <= 2
    labels = [ex.label for ex in mc]
    assert all(labels.count(i) > 20 for i in range(4))  # answer positions are spread

    # infilling: the middle is the body of the third of five consecutive lines of a test document
    infill, infill_rows = data.load_infilling(BUNDLED_DIR / "tasks" / "infilling.jsonl"), rows("infilling")
    assert len(infill) == 120
    for ex, row in zip(infill, infill_rows):
        assert in_test(row["source"], ex.prefix + ex.middle + ex.suffix + "\n")
        assert "\n" not in ex.middle and ex.middle.strip() and ex.suffix.startswith("\n")
        before, head = ex.prefix.rsplit("\n", 1)
        assert head + ex.middle in test_lines[row["source"]]  # a whole line (a verse number or headword may lead)
        assert len(before.split("\n")) == 2 and len(ex.suffix.split("\n")) == 3
    leaked = [ex for ex in infill if (ex.prefix + ex.middle + ex.suffix) in train_text]
    assert len(leaked) <= 2, leaked[:2]  # a few formulaic KJV lines recur verbatim in other chapters

    # last word: the target is the word that really ends the passage in the test document
    last, last_rows = data.load_last_word(BUNDLED_DIR / "tasks" / "last-word.jsonl"), rows("last-word")
    assert len(last) == 150
    for ex, row in zip(last, last_rows):
        assert re.fullmatch(r"[A-Za-z']{3,}", ex.target), ex.target
        found = re.search(re.escape(ex.context + " " + ex.target) + r"(?![A-Za-z'])", test_text[row["source"]])
        assert found, (ex.context[-60:], ex.target)
