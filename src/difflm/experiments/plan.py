"""The ablation experiment as data: its arms, model sizes, budgets, and the jobs (training stages and
evaluations) they expand into, each job a `difflm train` config or a `difflm eval` command line.

DiffuLLaMA's Table 3 (Gong et al. 2024) fine-tunes GPT-2 S / M on GSM8K-symbolic after adapting them
with four choices. Here every arm starts from the same AR base and spends the same compute in two
stages: stage A on the bundled text corpus (adaptation, or its stand-in), stage B supervised
fine-tuning on the synthetic `gsm` task; then exact match on the task's test split.

Torch-free: `difflm experiment --help` and the tests of the plan answer at once.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError


@dataclass(frozen=True)
class Arm:
    """One way to turn the AR base into a task model.

    stage_a: the objective of stage A on the text corpus - ``adapt`` (continual pretraining as a DLM
        from the AR base), ``ar`` (continued next-token pretraining) or ``diffusion`` (a DLM from
        random weights of the base's architecture); stage B is diffusion SFT for DLMs, AR SFT for ``ar``.
    anneal: attention annealed causal -> bidirectional over the first third of stage A (else
        bidirectional from the first step). shift: the hidden state at i-1 predicts token i.
    paper: Table 3's GSM8K-symbolic accuracy on GPT-2 S and M (None: not in the paper).
    """

    name: str
    label: str
    stage_a: str
    anneal: bool = True
    shift: bool = True
    paper: tuple[float, float] | None = None

    @property
    def is_dlm(self) -> bool:
        return self.stage_a != "ar"


ARMS: dict[str, Arm] = {arm.name: arm for arm in (
    Arm("diffusion", "diffusion loss (full recipe)", "adapt", paper=(45.4, 49.7)),
    Arm("no-anneal", "without attention annealing", "adapt", anneal=False, paper=(43.3, 47.2)),
    Arm("no-shift", "without the shift operation", "adapt", shift=False, paper=(33.5, 34.5)),
    Arm("ar", "AR fine-tuning", "ar", paper=(44.8, 45.6)),
    Arm("scratch", "DLM from scratch (same size)", "diffusion"),
)}
SIZE_ARMS = ("diffusion", "scratch")  # the sizes table: the adapted DLM against the DLM from scratch


@dataclass(frozen=True)
class Size:
    """A model size of the sizes table. ``architecture`` None = the bundled AR base itself (no
    pretraining here); else a LLaMA of these fields, pretrained as an AR model for
    ``Budget.pretrain_steps`` on the bundled corpus before the arms start from it."""

    name: str
    architecture: dict[str, Any] | None = None


BASE_SIZE = Size("base")  # the bundled ar-base (6.8 M parameters, 10.6 M tokens of pretraining)


def llama(hidden: int, layers: int, heads: int) -> dict[str, Any]:
    """A LLaMA of the bundled base's shape family (intermediate ~2.7 x hidden, tied embeddings)."""
    return {"model_type": "llama", "hidden_size": hidden, "intermediate_size": int(hidden * 2.6875),
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": heads,
            "max_position_embeddings": 256, "rope_theta": 10000.0, "tie_word_embeddings": True}


@dataclass(frozen=True)
class Budget:
    """How much of everything. Stage A packs the corpus into sequences of ``block_size`` tokens (the
    training configs' ``seq_length``; this budget keeps the old name so that an experiment directory
    written before the rename still resumes); stage B pads each task example to the smallest length
    that fits the task data (measured by the runner)."""

    seeds: tuple[int, ...] = (0, 1, 2)
    stage_a_steps: int = 80
    sft_steps: int = 200
    batch_size: int = 16
    block_size: int = 256
    pretrain_steps: int = 400
    size_seeds: int = 2     # the sizes table's own runs use the first this many seeds (the hour's budget)
    lr_adapt: float = 5e-4
    lr_scratch: float = 1e-3
    lr_pretrain: float = 2e-3
    lr_sft: float = 1e-3
    eval_every: int = 25
    eval_batches: int = 4
    save_every: int = 25
    n_train: int = 2900     # nearly every distinct training problem of these knobs (2920)
    n_validation: int = 200
    n_test: int = 200
    gsm_steps: str = "1-2"
    gsm_numbers: str = "2-10"
    sizes: tuple[Size, ...] = (Size("S", llama(64, 2, 2)), Size("M", llama(128, 4, 4)), BASE_SIZE)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


FULL = Budget()
QUICK = Budget(seeds=(0, 1), stage_a_steps=4, sft_steps=6, batch_size=4, block_size=64, pretrain_steps=4,
               eval_every=3, eval_batches=1, save_every=2, n_train=200, n_validation=8, n_test=8,
               sizes=(Size("S", llama(32, 1, 1)), BASE_SIZE))


@dataclass
class Job:
    """One unit of work: a `difflm train` run (``config``) or a `difflm eval` (``eval_args``).
    ``after``: names of the jobs whose outputs it reads; ``kind``: pretrain, stage_a, sft or eval."""

    name: str
    kind: str
    directory: Path
    after: list[str] = field(default_factory=list)
    config: dict[str, Any] | None = None
    eval_args: list[str] | None = None

    @property
    def steps(self) -> int:
        """Optimizer steps (1 for an evaluation): the unit of the progress bar."""
        return int(self.config["max_steps"]) if self.config else 1

    def is_done(self) -> bool:
        return (self.directory / "done.json").is_file()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "directory": str(self.directory), "after": self.after}


def chain_name(size: str, arm: str, seed: int) -> str:
    return f"{size}/{arm}/seed{seed}"


def _common(b: Budget, output: Path, seed: int) -> dict[str, Any]:
    return {"output_dir": str(output), "batch_size": b.batch_size, "eval_every": b.eval_every,
            "eval_batches": b.eval_batches, "save_every": b.save_every, "keep_checkpoints": 1,
            "log_every": 1, "log_with": ["jsonl"], "mixed_precision": "bf16", "threads": 1, "seed": seed}


def stage_a_config(arm: Arm, b: Budget, base: str | None, architecture: dict[str, Any] | None,
                   output: Path, seed: int) -> dict[str, Any]:
    """Stage A of ``arm`` on the bundled corpus, from the AR checkpoint ``base`` (or, for the DLM from
    scratch, a new model of ``architecture``)."""
    cfg = {**_common(b, output, seed), "objective": arm.stage_a, "train_files": ["bundled"],
           "validation_files": ["bundled"], "source_weights": {"wordnet": 0.4}, "seq_length": b.block_size,
           "max_steps": b.stage_a_steps, "warmup_steps": max(1, b.stage_a_steps // 10)}
    if arm.stage_a == "diffusion":
        return {**cfg, "architecture": architecture, "lr": b.lr_scratch, "min_lr": b.lr_scratch / 10,
                "diffusion": {"shift": arm.shift, "loss_normalization": "tokens"}}
    cfg.update(init=base, lr=b.lr_adapt, min_lr=b.lr_adapt / 10)
    if arm.stage_a == "adapt":  # the paper anneals over its first third too (configs/adapt.yaml)
        attention = {"anneal_steps": max(1, b.stage_a_steps // 3)} if arm.anneal else {"attention": "bidirectional"}
        cfg["diffusion"] = {**attention, "shift": arm.shift, "loss_normalization": "tokens"}
    return cfg


def sft_config(arm: Arm, b: Budget, init: Path, data: Path, seq_length: int, output: Path,
               seed: int) -> dict[str, Any]:
    """Stage B: SFT on the gsm task, diffusion loss for the DLM arms (the arm's shift kept)."""
    cfg = {**_common(b, output, seed), "objective": "sft", "init": str(init),
           "train_files": [str(data / "train.jsonl")], "validation_files": [str(data / "validation.jsonl")],
           "sft": {"loss": "diffusion" if arm.is_dlm else "ar", "pad_with": "eos"},
           "seq_length": seq_length, "max_steps": b.sft_steps, "warmup_steps": max(1, b.sft_steps // 10),
           "lr": b.lr_sft, "min_lr": b.lr_sft / 10}
    if arm.is_dlm:
        cfg["diffusion"] = {"shift": arm.shift, "loss_normalization": "tokens"}
    return cfg


def eval_args(arm: Arm, model: Path, data: Path, max_new_tokens: int, limit: int, seed: int,
              output: Path) -> list[str]:
    """`difflm eval` of a task model on the test split: greedy AR decoding with its KV cache; for a DLM,
    one token per model call (lowest-confidence remasking) in blocks of 8 with the prefix cache,
    stopping at EOS - the same decoding for every DLM arm (the dual cache scored lower in a trial)."""
    args = ["--model", str(model), "--tasks", f"gsm8k={data / 'test.jsonl'}", "--max-new-tokens", str(max_new_tokens),
            "--limit", str(limit), "--seed", str(seed), "--threads", "1", "--batch-size", "50", "--no-progress",
            "--output", str(output / "eval.json")]
    if arm.is_dlm:
        args += ["--block-length", "8", "--cache", "prefix", "--stop-at-eos"]
    return args


def plan_jobs(b: Budget, out: Path, *, base_dir: Path, base_architecture: dict[str, Any],
              sft_block: int, max_new_tokens: int, arms: tuple[str, ...] = tuple(ARMS)) -> list[Job]:
    """Every job of the experiment, in the order worth running them: the AR pretraining of the other
    sizes, the main table's chains (each arm at each seed on the bundled base), the other sizes' chains."""
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise InputError(f"unknown arm(s) {', '.join(unknown)}; choose from {', '.join(ARMS)}")
    data = out / "data"
    jobs: list[Job] = []

    def chain(size: str, arm: Arm, seed: int, base: str | None, architecture: dict[str, Any] | None,
              after: list[str]) -> None:
        name = chain_name(size, arm.name, seed)
        root = out / "runs" / size / arm.name / f"seed{seed}"
        a, s, e = root / "stage_a", root / "sft", root / "eval"
        jobs.append(Job(f"{name}/stage_a", "stage_a", a, after, stage_a_config(arm, b, base, architecture, a, seed)))
        jobs.append(Job(f"{name}/sft", "sft", s, [f"{name}/stage_a"],
                        sft_config(arm, b, a / "model", data, sft_block, s, seed)))
        jobs.append(Job(f"{name}/eval", "eval", e, [f"{name}/sft"],
                        eval_args=eval_args(arm, s / "model", data, max_new_tokens, b.n_test, seed, e)))

    size_arms = [a for a in SIZE_ARMS if a in arms]
    smaller = [size for size in b.sizes if size.architecture is not None and size_arms]  # the base: main table's
    for size in smaller if "diffusion" in size_arms else []:
        # first: nothing waits for the main table, and the sizes' chains wait for these
        pre = out / "runs" / size.name / "ar-pretrain"
        cfg = {**_common(b, pre, 0), "objective": "ar", "architecture": size.architecture,
               "train_files": ["bundled"], "validation_files": ["bundled"], "seq_length": b.block_size,
               "max_steps": b.pretrain_steps, "warmup_steps": max(1, b.pretrain_steps // 10),
               "lr": b.lr_pretrain, "min_lr": b.lr_pretrain / 10}
        jobs.append(Job(f"{size.name}/ar-pretrain", "pretrain", pre, [], cfg))
    for seed in b.seeds:
        for arm in arms:
            chain(BASE_SIZE.name, ARMS[arm], seed, str(base_dir), base_architecture, [])
    for size in smaller:
        pre = out / "runs" / size.name / "ar-pretrain"
        for seed in b.seeds[: b.size_seeds]:
            for arm in size_arms:
                after = [f"{size.name}/ar-pretrain"] if ARMS[arm].stage_a != "diffusion" else []
                chain(size.name, ARMS[arm], seed, str(pre / "model"), size.architecture, after)
    return jobs


def write_plan(jobs: list[Job], path: Path) -> None:
    path.write_text(json.dumps([j.to_dict() for j in jobs], indent=1) + "\n")
