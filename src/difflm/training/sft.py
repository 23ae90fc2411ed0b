"""Supervised fine-tuning, ``objective: sft``: prompt/response data, a DLM or an AR model, optional LoRA.

Data: JSONL files whose lines are chat messages, ``{"prompt", "response"}`` pairs or a task's records
(`difflm.tasks.formatting`). Every example becomes one row of ``block_size`` tokens::

    [BOS] prompt | response EOS | tail (EOS, or PAD with sft.pad_with: pad) ... up to block_size

``sft.loss: diffusion`` (DiffuLLaMA / LLaDA SFT): the prompt positions are ``src`` - never noised,
never scored; every other position (response, its EOS and the tail) is noised and scored as an
ordinary token, so the model learns where an answer ends; full bidirectional attention (no
annealing). The loss is `difflm.losses.masked_diffusion_loss` with ``src_mask`` under the step's
noise, as for the other objectives. With ``diffusion.block_size`` the model is a block diffusion
model (BD3-LM, Fast-dLLM v2): every block of the row noised at its own level and denoised seeing
only the clean blocks before it, the conditionals a block-by-block decoder asks for.
``sft.loss: ar``: next-token cross-entropy on the response and its EOS only (the tail is no
target), the AR baseline trained by the same command.

Normalisation: the loss of a step is the sum over the *global* batch divided by the global batch's
denominator (its maskable positions, or masked tokens with ``loss_normalization: masked``; its
response tokens for AR), so any split into processes and micro-batches gives the same loss.

The trainer is `Trainer` with the data, the model and the loss of SFT (`SFTTrainer`); resume,
DDP, checkpoints, logging and the progress bar are the shared ones.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from ..errors import ConfigError, InputError
from ..losses import draw_blocks, draw_noise, in_blocks, maskable_positions, masked_diffusion_loss
from ..model import DiffusionLM
from ..tasks.formatting import layout_of, sft_texts
from ..tasks.model_task import TASKS, write_model_task
from .data import BlockBatches
from .trainer import Trainer, _step_generator, build_model, load_tokenizer_for

SFT_SUFFIXES = (".jsonl", ".jsonl.gz", ".json")


# -- data ---------------------------------------------------------------------------------------
def read_sft_records(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of every non-blank line; `InputError` naming the file and line of a bad one."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"SFT data file {p} not found")
    if not str(p).endswith(SFT_SUFFIXES):
        raise InputError(f"SFT data file {p}: use JSONL (.jsonl, .jsonl.gz), one example per line")
    from ..evaluation.data import read_jsonl  # one JSONL reader, with file:line errors

    yield from read_jsonl(p)


@dataclass
class SFTExample:
    """One tokenized example: ``ids`` = [BOS] + prompt + response + EOS (unpadded); the first
    ``prompt_len`` ids are the prompt (BOS included)."""

    ids: list[int]
    prompt_len: int
    where: str
    layout: str


def encode_sft_file(path: str | os.PathLike, tokenizer: Any, *, block_size: int | None = None) -> list[SFTExample]:
    """Every example of an SFT file, tokenized; with ``block_size``, `InputError` (file:line) for one
    that does not fit a row."""
    records = [(f"{path}:{lineno}", obj) for lineno, obj in read_sft_records(path)]
    if not records:
        raise InputError(f"SFT data file {path} holds no examples")
    texts = [sft_texts(obj, tokenizer=tokenizer, where=where) for where, obj in records]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if eos is None:
        raise ConfigError("the tokenizer has no EOS token; SFT needs one to end every response")
    out = []
    for start in range(0, len(texts), 512):
        chunk = texts[start : start + 512]
        prompts = tokenizer([p for p, _ in chunk], add_special_tokens=False)["input_ids"]
        responses = tokenizer([r for _, r in chunk], add_special_tokens=False)["input_ids"]
        for (where, obj), prompt, response in zip(records[start : start + 512], prompts, responses):
            prompt, response = list(prompt), list(response)
            if bos is not None and prompt[:1] != [bos]:
                prompt = [bos] + prompt
            if response[-1:] != [eos]:
                response = response + [eos]
            if len(response) < 2:
                raise InputError(f"{where}: the response is empty")
            example = SFTExample(prompt + response, len(prompt), where, layout_of(obj) or "")
            if block_size is not None and len(example.ids) > block_size:
                raise InputError(
                    f"{where}: the example is {len(example.ids)} tokens (prompt {len(prompt)} with BOS, response "
                    f"{len(response)} with EOS), longer than block_size {block_size}; raise block_size (up to the "
                    "model's context) or shorten it")
            out.append(example)
    return out


@dataclass
class SFTData:
    """Padded rows: ``ids`` [N, block_size], ``prompt_lens`` [N] (BOS included), ``lengths`` [N]
    (prompt + response + EOS, before the tail)."""

    ids: torch.Tensor
    prompt_lens: torch.Tensor
    lengths: torch.Tensor
    layouts: frozenset[str] = frozenset()  # the record layouts seen (chat, pair, gsm, sudoku, countdown)


def build_sft_data(paths: list[str], tokenizer: Any, block_size: int, tail_id: int) -> SFTData:
    """Every example of ``paths`` in a row of ``block_size`` tokens, the tail filled with ``tail_id``."""
    examples = [e for p in paths for e in encode_sft_file(p, tokenizer, block_size=block_size)]
    ids = torch.full((len(examples), block_size), tail_id, dtype=torch.long)
    for row, example in enumerate(examples):
        ids[row, : len(example.ids)] = torch.tensor(example.ids, dtype=torch.long)
    return SFTData(ids, torch.tensor([e.prompt_len for e in examples]), torch.tensor([len(e.ids) for e in examples]),
                   frozenset(e.layout for e in examples))


class SFTBatches(BlockBatches):
    """Deterministic batches of SFT rows (the global batch of step k is a function of (seed, k))."""

    def __init__(self, data: SFTData, batch_size: int, seed: int, shuffle: bool = True) -> None:
        super().__init__(data.ids, batch_size, seed, shuffle)
        self.data = data

    def global_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # type: ignore[override]
        """(x [B, L], src [B, L]: the prompt positions, lengths [B]) of step ``step``."""
        rows = self.rows(step)
        x, prompt_lens = self.data.ids[rows], self.data.prompt_lens[rows]
        src = torch.arange(x.shape[1])[None, :] < prompt_lens[:, None]
        return x, src, self.data.lengths[rows]


def ar_response_loss(model: Any, x: torch.Tensor, src: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(sum of next-token cross-entropies over the response and its EOS, number of such targets) of
    a causal LM. The tail after EOS is cut off (causal attention: it changes nothing before it)."""
    width = int(lengths.max())
    x, src = x[:, :width], src[:, :width]
    logits = model(input_ids=x).logits[:, :-1]
    positions = torch.arange(1, width, device=x.device)
    targets = ~src[:, 1:] & (positions[None, :] < lengths.to(x.device)[:, None])
    ce = F.cross_entropy(logits.float().transpose(1, 2), x[:, 1:], reduction="none")
    return (ce * targets).sum(), int(targets.sum())


def init_block_size(init: Path) -> int | None:
    """The block size of a block diffusion checkpoint in any layout difflm loads (difflm, SDAR, ...),
    else None (an AR checkpoint, a full-attention DLM). Reads configs only, no tensor."""
    from ..formats import detect, plan_checkpoint

    found = detect(init)
    if found.format == "causal-lm":  # what detect_format calls a plain AR checkpoint (see _build_model)
        return None
    return plan_checkpoint(found, {})[0].config.block_size


def sft_diffusion_settings(diffusion: dict[str, Any], block_size: int | None) -> dict[str, Any]:
    """The DiffusionConfig fields of a DLM trained by SFT: ``diffusion`` with full attention from the
    first step (DiffuLLaMA's SFT: anneal_steps 1), or block-causal attention for a block diffusion
    model (``block_size``)."""
    attention = {"attention": "bidirectional"} if block_size is None else {"attention": "block_causal",
                                                                           "block_size": block_size}
    return {"anneal_steps": 1, **diffusion, **attention}


def sft_tokenizer(cfg: Any) -> Any:
    """The tokenizer of an SFT run: the ``init`` checkpoint's own, unless ``tokenizer`` names one."""
    from ..bundled import resolve_model
    from ..formats import load_tokenizer

    if cfg.init and cfg.tokenizer == "bundled":
        init = resolve_model(cfg.init)
        if any((init / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
            tokenizer = load_tokenizer(init)
            if tokenizer is not None:
                return tokenizer
    return load_tokenizer_for(cfg)


def describe_sft_file(path: str, *, tokenizer: str = "bundled", block_size: int | None = None, show: int = 1) -> str:
    """What `difflm data check` prints: layouts, token counts, the first ``show`` examples as trained."""
    from ..bundled import TOKENIZER_DIR
    from ..formats import load_tokenizer

    directory = TOKENIZER_DIR if tokenizer == "bundled" else Path(tokenizer)
    if not directory.is_dir():
        raise InputError(f"tokenizer directory {directory} not found")
    tok = load_tokenizer(directory)
    if tok is None:
        raise InputError(f"{directory} holds no tokenizer")
    examples = encode_sft_file(path, tok, block_size=block_size)
    lengths = [len(e.ids) for e in examples]
    prompts = [e.prompt_len for e in examples]
    layouts = Counter(e.layout for e in examples)
    lines = [f"{path}: {len(examples)} examples ({', '.join(f'{n} {k}' for k, n in layouts.items())})",
             f"tokens per example (BOS + prompt + response + EOS): min {min(lengths)}, max {max(lengths)}, "
             f"mean {sum(lengths) / len(lengths):.1f}; prompt max {max(prompts)}, "
             f"response max {max(n - p for n, p in zip(lengths, prompts))}"]
    if block_size is not None:
        lines.append(f"every example fits block_size {block_size} (tail of at least {block_size - max(lengths)} tokens)")
    else:
        lines.append(f"the smallest block_size that fits every example: {max(lengths)}")
    for e in examples[:show]:
        lines += [f"--- {e.where} ({e.layout}): prompt {e.prompt_len} tokens, response {len(e.ids) - e.prompt_len} tokens",
                  "PROMPT:   " + repr(tok.decode(e.ids[: e.prompt_len])),
                  "RESPONSE: " + repr(tok.decode(e.ids[e.prompt_len :]))]
    return "\n".join(lines)


# -- the trainer --------------------------------------------------------------------------------
class SFTTrainer(Trainer):
    """`Trainer` for ``objective: sft`` (``Trainer(cfg)`` returns one): SFT rows instead of packed
    blocks, the prompt as ``src``, the diffusion or AR response loss, LoRA adapters."""

    def _build_data(self) -> None:
        cfg = self.cfg
        self.tokenizer = sft_tokenizer(cfg)
        tail = self.tokenizer.eos_token_id if cfg.sft["pad_with"] == "eos" else self.tokenizer.pad_token_id
        if tail is None:
            raise ConfigError(f"sft.pad_with {cfg.sft['pad_with']}: the tokenizer has no such token")
        train = build_sft_data(cfg.train_files, self.tokenizer, cfg.block_size, tail)
        val = build_sft_data(cfg.validation_files, self.tokenizer, cfg.block_size, tail)
        # trained on one task's records only: saved models say so (task.json), for `difflm generate`
        self.task = next(iter(train.layouts)) if len(train.layouts) == 1 and train.layouts <= set(TASKS) else None
        self.train_batches = SFTBatches(train, cfg.batch_size, cfg.seed)
        self.val_batches = SFTBatches(val, min(cfg.batch_size, len(val.ids)), seed=1234)

    def _build_model(self) -> torch.nn.Module:
        from ..bundled import MODELS, resolve_model
        from ..formats import detect_format

        cfg = self.cfg
        loss = cfg.sft["loss"]
        if cfg.init:
            init = resolve_model(cfg.init)
            if not (init / "config.json").is_file():
                raise InputError(f"init {init} is not a model directory (no config.json)")
            is_dlm = detect_format(init) != "causal-lm"
            if loss == "ar" and is_dlm:
                raise ConfigError(f"sft.loss ar fine-tunes an AR model; init {cfg.init} is a DLM")
            if cfg.lora is not None and loss == "diffusion" and not is_dlm and self.tokenizer.mask_token_id is None:
                raise ConfigError("lora on an AR checkpoint whose tokenizer has no mask token: the new [MASK] row "
                                  "would stay untrained; adapt it first (objective adapt), then fine-tune with LoRA")
            objective = "ar" if loss == "ar" else ("diffusion" if is_dlm else "adapt")
            self.lora_base = cfg.init if cfg.init in MODELS else str(init.resolve())
        else:
            objective, init = ("ar" if loss == "ar" else "diffusion"), None
        block = cfg.diffusion.get("block_size")
        if block is None and objective == "diffusion" and init is not None:
            block = init_block_size(init)  # a block diffusion init fine-tuned further stays one
        diffusion = {} if loss == "ar" else sft_diffusion_settings(cfg.diffusion, block)
        stand_in = dataclasses.replace(cfg, objective=objective, init=None if init is None else str(init),
                                       diffusion=diffusion, sft={}, lora=None, noised_blocks=None)
        model = build_model(stand_in, self.tokenizer)
        backbone = model.model if isinstance(model, DiffusionLM) else model
        if len(self.tokenizer) > backbone.get_input_embeddings().weight.shape[0]:
            raise ConfigError(f"the tokenizer ({len(self.tokenizer)} tokens) is larger than the model's vocabulary")
        if cfg.noised_blocks is not None and not (isinstance(model, DiffusionLM) and model.config.block_size):
            raise ConfigError("noised_blocks needs a block diffusion model: set diffusion.block_size")
        if isinstance(model, DiffusionLM):
            model.tokenizer = self.tokenizer  # the one the data were tokenized with (its chat template included)
        else:
            context = getattr(model.config, "max_position_embeddings", None)
            if context is not None and cfg.block_size > context:
                raise ConfigError(f"block_size {cfg.block_size} exceeds the model's context of {context}")
        if cfg.lora is not None:
            from .lora import attach_lora

            if isinstance(model, DiffusionLM):
                model.model = attach_lora(model.model, cfg.lora)
            else:
                model = attach_lora(model, cfg.lora)
        return model

    def _micro_batches(self, step: int) -> list[tuple[Any, ...]]:
        """This process's micro-batches of step ``step``: (x, noise, t, src, lengths, scale, blocks). The
        noise (and with ``noised_blocks`` the blocks it covers) is drawn for the whole global batch;
        ``scale`` turns a micro-batch's own mean into its share of the global batch's mean (see the
        module doc)."""
        cfg, acc = self.cfg, self.accelerator
        x, src, lengths = self.train_batches.global_batch(step)
        noise = t = blocks = None
        if self.dlm is not None:
            if cfg.noised_blocks is not None:
                blocks = draw_blocks(self.dlm, x, cfg.noised_blocks, src_mask=src, ends=lengths,
                                     generator=_step_generator(cfg.seed, step, 2))
            noise, t = draw_noise(self.dlm, x, src_mask=src, antithetic=cfg.antithetic,
                                  generator=_step_generator(cfg.seed, step, 0), blocks=blocks)
            if self.dlm.config.loss_normalization == "masked":
                denominator = int((noise & self.dlm.predictable_mask(x)).sum())
            else:
                maskable = maskable_positions(self.dlm, x, src_mask=src)
                if blocks is not None:
                    maskable = maskable & in_blocks(self.dlm, x, blocks)
                denominator = int(maskable.sum())
        else:
            positions = torch.arange(1, x.shape[1])
            denominator = int((~src[:, 1:] & (positions[None, :] < lengths[:, None])).sum())
        scale = acc.num_processes * cfg.grad_accum / max(1, denominator)
        start = acc.process_index * self.micro_batch * cfg.grad_accum
        out = []
        for m in range(cfg.grad_accum):
            rows = slice(start + m * self.micro_batch, start + (m + 1) * self.micro_batch)
            out.append((x[rows], None if noise is None else noise[rows], None if t is None else t[rows],
                        src[rows], lengths[rows], scale, None if blocks is None else blocks[rows]))
        return out

    def _loss(self, model: torch.nn.Module, x: torch.Tensor, noise: torch.Tensor | None, t: torch.Tensor | None,
              src: torch.Tensor, lengths: torch.Tensor, scale: float | None = None,
              blocks: torch.Tensor | None = None, *, step: int | None = None,
              mask_generator: torch.Generator | None = None, normalization: str | None = None) -> torch.Tensor:
        """The micro-batch's loss sum times ``scale`` (its share of the global mean), or its own mean
        when ``scale`` is None (validation)."""
        device = self.accelerator.device
        x, src = x.to(device), src.to(device)
        if self.dlm is None:
            total, count = ar_response_loss(model, x, src, lengths)
        else:
            out = masked_diffusion_loss(self.dlm, x, t=t, noise_mask=noise, src_mask=src, step=step,
                                        generator=mask_generator, normalization=normalization, forward=model,
                                        blocks=blocks, **self.cfg.loss_options(step is not None))
            norm = normalization or self.dlm.config.loss_normalization
            count = out.num_masked if norm == "masked" else out.num_targets
            total = out.loss * max(1, count)
        return total / max(1, count) if scale is None else total * scale

    @torch.no_grad()
    def evaluate(self) -> float:
        """Validation loss in nats per target token: the diffusion ELBO bound over the response and its
        tail (fixed noise, "tokens" normalisation), or the AR NLL of the response and its EOS."""
        model = self.accelerator.unwrap_model(self.wrapped)
        model.eval()
        losses = []
        n_batches = min(self.cfg.eval_batches, max(1, len(self.val_batches.blocks) // self.val_batches.batch_size))
        for i in range(n_batches):
            x, src, lengths = self.val_batches.global_batch(i)
            noise = t = None
            if self.dlm is not None:  # the same noise at every evaluation: curves compare like with like
                noise, t = draw_noise(self.dlm, x, src_mask=src, antithetic=True, generator=_step_generator(4321, i, 0))
            with self.accelerator.autocast():
                losses.append(self._loss(model, x, noise, t, src, lengths, normalization="tokens").item())
        return sum(losses) / len(losses)

    def save_model(self, directory: Path) -> Path:
        """Full fine-tuning: the model as the other objectives save it. LoRA: an adapter directory
        (`difflm.training.lora`), and with ``lora.merge`` the merged model beside it (model-merged)."""
        cfg, acc = self.cfg, self.accelerator
        if cfg.lora is None:
            super().save_model(directory)
            if acc.is_main_process and self.task:
                write_model_task(directory, self.task)
            return directory
        from .lora import merge_adapter, save_adapter

        if acc.is_main_process:
            model = acc.unwrap_model(self.wrapped)
            is_dlm = isinstance(model, DiffusionLM)
            save_adapter(model.model if is_dlm else model, directory, base=self.lora_base,
                         loss=cfg.sft["loss"], tokenizer=self.tokenizer,
                         diffusion=model.config.to_dict() if is_dlm else None, settings=cfg.lora)
            if self.task:
                write_model_task(directory, self.task)
            if cfg.lora["merge"]:
                merge_adapter(directory, Path(directory).parent / "model-merged")
                if self.task:
                    write_model_task(Path(directory).parent / "model-merged", self.task)
        acc.wait_for_everyone()
        return directory
