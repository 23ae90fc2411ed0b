"""Self-speculative decoding with one context-causal block diffusion model (TiDAR / NBDiff style).

A block model with ``block_context="causal"`` (NBDiff; the bundled ``dlm-gsm``) has two views of
the same weights: finished blocks are read causally token by token - an AR model, the *verifier* -
and the block being denoised reads itself bidirectionally and the finished text before it - a
one-step parallel *drafter*. Each model call here runs both, in one forward over a window of two
segments that share the KV cache of the committed text:

* V, the verify segment: the committed tokens whose keys are not cached yet (the prompt at the
  first call, then the previous call's bonus token) followed by the drafts, read causally. Its
  outputs are the AR head's next-token predictions; the longest prefix of drafts that equals them
  is accepted, plus the AR head's own token after it (the *bonus*).
* M, the draft segment: the block that follows V's last token, as the block sampler would denoise
  it - its known tokens clean, the rest [MASK] - bidirectional inside itself, reading the text
  before the block causally. Its argmax is the next call's drafts, valid only when every draft of
  V was accepted (M assumed them); after a rejection the next call drafts afresh.

The cache keeps only keys computed in the causal view of accepted text: after each call it is cut
back to the accepted prefix, dropping rejected drafts and the M segment. The bonus token's own key
is not computed yet: it leads the next call's V. Under greedy decoding every committed token is
the AR head's argmax given the committed text, so the output is the model's own AR greedy decoding
(`ar_greedy`), token for token; only the number of model calls changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from transformers import DynamicCache

from .. import rng
from ..errors import InputError
from .step import SamplerStep, stop_token_ids, trim_at_stop
from .tokens import inverse_cdf, sample_tokens

__all__ = ["Drawing", "SpeculativeResult", "ar_greedy", "check_speculative_model", "speculative_denoise", "speculative_row",
           "verify_and_draft"]


def check_speculative_model(model) -> None:
    """`InputError` (one line, naming why) unless ``model`` has the causal view self-speculation needs:
    a shifted block diffusion model whose finished blocks are read causally."""
    cfg = model.config
    if cfg.block_size is None or cfg.attention != "block_causal":
        raise InputError("speculative decoding needs a block diffusion model (block_size, attention block_causal) "
                         "whose finished blocks are read causally; this model is not one")
    if cfg.block_context != "causal":
        raise InputError("speculative decoding needs a causal view of finished blocks (block_context: causal, "
                         f"NBDiff-style); this model reads them block by block ({cfg.block_context!r})")
    if not cfg.shift:
        raise InputError("speculative decoding needs a shifted model (the hidden state at i-1 predicts token i): "
                         "without shift the causal view has no next-token head")


@dataclass
class SpeculativeResult:
    """One row's decoding: ``tokens`` (the new tokens, budget-long unless stopped), ``calls`` (model
    calls), ``accepted`` (drafts accepted at each call, bonus excluded)."""

    tokens: list[int]
    calls: int
    accepted: list[int]


def _backbone_mask(allowed: torch.Tensor, model) -> torch.Tensor:
    """The 4-D mask [1, 1, Q, K] the backbone takes: boolean for sdpa, additive float for eager."""
    allowed = allowed[None, None]
    if model.model.config._attn_implementation != "eager":
        return allowed
    return torch.zeros(allowed.shape, dtype=torch.float32, device=allowed.device).masked_fill(
        ~allowed, torch.finfo(torch.float32).min)


def _window_mask(cached: int, v_pos: torch.Tensor, m_pos: torch.Tensor, block_start: int) -> torch.Tensor:
    """BoolTensor [Q, K], Q = |V| + |M|, K = cached + Q (keys: the cache, then V, then M).

    V rows: causal over the cache and V (positions <= the query's). M rows: the text before the
    block's first query position (``block_start``, the last token of the previous block, which
    predicts the block's first token) from the cache and V, plus M itself bidirectionally - except
    M's last position, which predicts past the block (or the budget): with shift its attention id is
    the next block's, as on the block sampler's canvas, so only it sees itself."""
    device = v_pos.device
    cache_pos = torch.arange(cached, device=device)
    keys = torch.cat([cache_pos, v_pos])
    v_rows = torch.cat([keys[None, :] <= v_pos[:, None],
                        torch.zeros(len(v_pos), len(m_pos), dtype=torch.bool, device=device)], dim=1)
    if len(m_pos) == 0:
        return v_rows
    m_prefix = (keys < block_start)[None, :].expand(len(m_pos), -1)
    m_self = torch.ones(len(m_pos), len(m_pos), dtype=torch.bool, device=device)
    m_self[:, -1] = False
    m_self[-1, -1] = True
    return torch.cat([v_rows, torch.cat([m_prefix, m_self], dim=1)], dim=0)


@dataclass(frozen=True)
class Drawing:
    """How tokens are drawn from a distribution (`sample_tokens`' settings); temperature 0 = greedy."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    top_p_first: bool = False

    def __call__(self, logits: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens LongTensor [N], probs FloatTensor [N, V]) of logits [N, V] (`sample_tokens`)."""
        return sample_tokens(logits, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                             generator=generator, top_p_first=self.top_p_first)


def _verify(drafts: list[int], q: torch.Tensor | None, p: torch.Tensor, sampled: list[int], drawing: Drawing,
            generator: torch.Generator | None) -> tuple[int, int | None]:
    """(accepted drafts j, the token after them or None when p has no row for it).

    ``p`` [m + 1, V]: the AR head's distributions at the drafts' positions and after them; ``q``
    [m, V]: the distributions the drafts were drawn from; ``sampled`` [m + 1]: tokens drawn from p.
    Greedy: a draft is accepted when it is p's argmax (``sampled``), and the token after is the argmax.
    Sampling (speculative sampling): draft x is accepted with probability min(1, p(x) / q(x)); at the
    first rejection the token is drawn from norm(max(0, p - q)) instead, which makes every committed
    token a draw from p given the committed text; after all drafts, the draw from p."""
    for j, x in enumerate(drafts):
        if drawing.temperature == 0.0:
            if x == sampled[j]:
                continue
            return j, sampled[j]
        u = float(rng.uniform((1,), generator=generator)[0])
        if u * float(q[j, x]) < float(p[j, x]):
            continue
        residual = (p[j] - q[j]).clamp(min=0.0)
        draw = inverse_cdf(residual[None] / residual.sum(), rng.uniform((1,), generator=generator, device=p.device))
        return j, int(draw[0])
    return len(drafts), (sampled[len(drafts)] if len(sampled) > len(drafts) else None)


def verify_and_draft(model, past: DynamicCache, tokens: list[int], cached: int, drafts: list[int],
                     total: int) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """One model call: the verify segment V and the draft segment M in one forward (module docstring).

    Args:
        past: the cache of positions [0, ``cached``) (causal view); it is extended in place by V and M
            (the caller crops it back to the accepted text).
        tokens: the committed text (prompt first); drafts: proposals for the positions after it.
        total: the row's final length (prompt + budget): M never reaches past it.
    Returns:
        (verify FloatTensor [|V|, V_vocab]: row r is the AR head's logits for position cached + 1 + r -
        one row fewer when the drafts reach ``total``; draft FloatTensor [|M| - 1, V_vocab] or None:
        row r is the diffusion view's logits for position m_start + 1 + r; m_start).
    """
    size, mask_id, device = model.config.block_size, model.mask_token_id, model.device
    end = len(tokens) + len(drafts)  # the first position V does not hold
    v_tok = tokens[cached:] + drafts
    v_pos = torch.arange(cached, end, device=device)
    # M: the block of position `end` (its first query is the position before the block, which
    # predicts the block's first token); known tokens clean, the rest masked. None at the end.
    m_tok: list[int] = []
    m_start = m_stop = end
    if end < total:
        m_start, m_stop = max(end // size * size - 1, 0), min((end // size + 1) * size, total)
        known = tokens + drafts
        m_tok = [known[p] if p < end else mask_id for p in range(m_start, m_stop)]
    m_pos = torch.arange(m_start, m_stop, device=device)
    ids = torch.tensor([v_tok + m_tok], device=device)
    # with shift the output at window index i predicts the token after its position: every index
    # is a source except the last (at the very end it predicts past the budget; else it is M's last,
    # which predicts past the block). `logits_at` takes the aligned targets: the sources moved one
    # to the right.
    targets = torch.ones_like(ids, dtype=torch.bool)
    targets[0, 0] = False
    mask = _backbone_mask(_window_mask(cached, v_pos, m_pos, m_start), model)
    logits, _ = model.logits_at(ids, targets, attention_mask_4d=mask, position_ids=torch.cat([v_pos, m_pos])[None],
                                past_key_values=past, use_cache=True)
    if not m_tok:
        return logits, None, m_start
    return logits[: len(v_tok)], logits[len(v_tok):], m_start


@torch.inference_mode()
def speculative_row(model, prompt: list[int], budget: int, *, stop_ids: list[int] | None = None,
                    drawing: Drawing = Drawing(), generator: torch.Generator | None = None, redraft: bool = False,
                    on_commit: Callable[[int, list[int], int], None] | None = None) -> SpeculativeResult:
    """Self-speculative decoding of one row: ``budget`` new tokens after ``prompt`` (ids of the real
    tokens, no padding), stopping after the first of ``stop_ids`` when given. Greedy by default; with a
    ``drawing`` temperature > 0, speculative sampling (each committed token a draw from the AR head).

    ``redraft``: after a rejection, draft the rest of the block afresh from the committed text (the
    next call verifies only the new token) instead of verifying the leftover drafts, which were made
    without the corrected token - measured on dlm-gsm the leftovers do as well. Either way the output
    is the AR head's (lossless). ``on_commit(position, tokens, drafted)`` is called after every model
    call with the tokens it committed from ``position`` on and how many drafts it verified.
    """
    check_speculative_model(model)
    total = len(prompt) + budget
    tokens = list(prompt)  # committed text
    cached = 0  # keys of positions [0, cached) are in the cache (causal view, accepted text)
    drafts: list[int] = []  # for positions len(tokens) ...
    q: torch.Tensor | None = None  # [len(drafts), V]: what they were drawn from
    past = DynamicCache()
    calls, accepted = 0, []
    stops = set(stop_ids or ())
    while len(tokens) < total:
        n = len(tokens)
        drafts = drafts[: total - n]
        end = n + len(drafts)  # the first position V does not hold
        verify, draft, m_start = verify_and_draft(model, past, tokens, cached, drafts, total)
        calls += 1
        # verify's row r predicts position cached + 1 + r: the drafts' positions (and the one after) from row n - cached - 1
        sampled, p = drawing(verify[n - cached - 1:], generator)
        j, after = _verify(drafts, q, p, sampled.tolist(), drawing, generator)
        new = drafts[:j] + ([] if after is None else [after])
        accepted.append(j)
        cut = next((i for i, t in enumerate(new) if t in stops), None)
        tokens += new if cut is None else new[: cut + 1]
        if on_commit is not None:
            on_commit(n, new if cut is None else new[: cut + 1], len(drafts))
        if cut is not None:
            break
        extra = past.get_seq_length() - (n + j)  # keep the accepted text's keys (the new token's is made next call)
        if extra:
            past.crop(-extra)
        cached = n + j
        if j == len(drafts) and draft is not None:
            # M assumed every draft: its rows predict positions m_start + 1 ...; the new token took `end`
            m_drafts, m_q = drawing(draft[end - m_start:], generator)
            drafts, q = m_drafts.tolist(), m_q
        elif redraft:
            drafts, q = [], None
        else:
            drafts, q = drafts[j + 1:], (None if q is None else q[j + 1:])
    return SpeculativeResult(tokens[len(prompt):], calls, accepted)


@torch.inference_mode()
def ar_greedy(model, prompt: list[int], budget: int, *, stop_ids: list[int] | None = None) -> SpeculativeResult:
    """The model's own AR-mode greedy decoding with a KV cache, one token per call: with shift its causal
    view is the backbone's plain causal-LM forward (the hidden state at i-1 predicts token i; transformers
    attends causally when given no mask). The reference that greedy self-speculation reproduces token for
    token; stops after the first of ``stop_ids`` when given."""
    check_speculative_model(model)
    past, stops, new = DynamicCache(), set(stop_ids or ()), []
    ids = torch.tensor([prompt], device=model.device)
    for _ in range(budget):
        token = int(model.model(input_ids=ids, past_key_values=past, use_cache=True).logits[0, -1].argmax())
        new.append(token)
        if token in stops:
            break
        ids = torch.tensor([[token]], device=model.device)
    return SpeculativeResult(new, len(new), [0] * len(new))


def speculative_denoise(model, canvas: torch.Tensor, generate_mask: torch.Tensor, attention_mask: torch.Tensor | None,
                        *, options, generator: rng.Generators = None, callback: Callable | None = None,
                        output_history: bool = False, logits_processor: Callable | None = None) -> tuple:
    """`difflm.sampling.denoise` with ``speculative=True``: each row's continuation by self-speculation
    (`speculative_row`), rows one after another (they accept different lengths, so each keeps its own
    cache). Returns the fields of a `Generation`: (sequences [B, L], generate_mask [B, L], new tokens
    per row, model calls, history or None).

    The generated positions of a row must be the end of it (a continuation; infilling has no causal
    view of its suffix). Options that shape commit-and-mask decoding (steps, strategy, threshold,
    block_length, cache, schedule) have no effect; those that would change what the AR head decodes are
    refused in one line."""
    check_speculative_model(model)
    refused = [name for name, on in (("cfg_scale", options.cfg_scale > 0), ("remask", options.remask > 0),
                                     ("editing_threshold", options.editing_threshold is not None),
                                     ("sub_block_length", options.sub_block_length is not None),
                                     ("attention", options.attention not in (None, "block_causal")),
                                     ("gumbel", options.gumbel), ("suppress_eos", options.suppress_eos),
                                     ("logits_processor", logits_processor is not None)) if on]
    if refused:
        raise InputError(f"speculative decoding does not combine with {', '.join(refused)}: drop "
                         f"{'it' if len(refused) == 1 else 'them'} or speculative")
    real = torch.ones_like(generate_mask) if attention_mask is None else attention_mask.bool()
    stop_ids = stop_token_ids(model) if options.stop_at_eos else []
    if options.stop_at_eos and not stop_ids:
        raise InputError("stop_at_eos needs an eos_token_id or pad_token_id in the model's config")
    cfg = model.config
    fill_id = next((i for i in (cfg.eos_token_id, cfg.pad_token_id) if i is not None), None)  # as `BlockSchedule`
    drawing = Drawing(options.temperature, options.top_p, options.top_k, options.filter_order == "top_p_first")
    if isinstance(generator, rng.RowGenerators):
        generators = generator.generators
    else:
        generators = [generator] * canvas.shape[0]
    canvas = canvas.clone()
    history: list[torch.Tensor] | None = [] if output_history else None
    calls = 0
    for b in range(canvas.shape[0]):
        where = generate_mask[b].nonzero().flatten()
        columns = real[b].nonzero().flatten()
        budget = len(where)
        if budget == 0:
            continue
        if int(where[0]) != int(columns[-1]) - budget + 1 or int(where[-1]) != int(columns[-1]):
            raise InputError("speculative decoding continues a prompt: the generated positions must end each row "
                             "(no infilling suffix, no gaps)")
        offset = int(columns[0])  # the canvas column of the row's position 0 (after its left padding)
        prompt = canvas[b, offset:where[0]].tolist()
        if not prompt:
            raise InputError("speculative decoding needs a prompt of at least one token in every row")
        canvas[b, where] = model.mask_token_id

        def commit(position: int, new: list[int], drafted: int, b: int = b, offset: int = offset,
                   where: torch.Tensor = where) -> None:
            nonlocal calls
            step_mask = torch.zeros_like(generate_mask)
            step_mask[b, offset + position: offset + position + len(new)] = True
            canvas[b, offset + position: offset + position + len(new)] = torch.tensor(new, device=canvas.device)
            if new and new[-1] in stop_ids:  # the row stops: the rest is EOS, as the block sampler leaves it
                rest = where[where >= offset + position + len(new)]
                canvas[b, rest] = fill_id
                step_mask[b, rest] = True
            if history is not None:
                history.append(canvas.clone())
            if callback is not None:
                callback(SamplerStep(calls, budget, b, canvas, step_mask, generate_mask, None, attention_mask,
                                     model.mask_token_id))
            calls += 1

        speculative_row(model, prompt, budget, stop_ids=stop_ids, drawing=drawing, generator=generators[b],
                        on_commit=commit)
    new_tokens = [row[m].tolist() for row, m in zip(canvas, generate_mask)]
    if options.stop_at_eos:
        new_tokens = [trim_at_stop(row, stop_ids) for row in new_tokens]
    return canvas, generate_mask, new_tokens, calls, history
