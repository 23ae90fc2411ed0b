"""Next-token losses: the AR baseline of pretraining (`ar_loss`) and of SFT (`ar_response_loss`)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..model import DiffusionLM


def ar_loss(model: Any, x: torch.Tensor, *, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy of a causal model on x [B, L] (padding ignored).

    ``model`` is a `DiffusionLM` with shift (run with causal attention) or a transformers causal LM.
    """
    if isinstance(model, DiffusionLM):
        if not model.config.shift:
            raise ConfigError("ar_loss needs a model with shift=True (an AR-style backbone)")
        logits = model.logits(x, attention_mask, attention="causal")[:, 1:]
    else:
        logits = model(input_ids=x, attention_mask=attention_mask).logits[:, :-1]
    targets = x[:, 1:]
    if attention_mask is not None:
        targets = targets.masked_fill(~attention_mask[:, 1:].bool(), -100)
    return F.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=-100)


def ar_response_loss(model: Any, x: torch.Tensor, src: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(sum of next-token cross-entropies over the response and its EOS, number of such targets) of
    a causal LM on SFT rows x [B, L] whose prompt is ``src`` [B, L] and whose answer ends at
    ``lengths`` [B]. The tail after EOS is cut off (causal attention: it changes nothing before it)."""
    width = int(lengths.max())
    x, src = x[:, :width], src[:, :width]
    logits = model(input_ids=x).logits[:, :-1]
    positions = torch.arange(1, width, device=x.device)
    targets = ~src[:, 1:] & (positions[None, :] < lengths.to(x.device)[:, None])
    ce = F.cross_entropy(logits.float().transpose(1, 2), x[:, 1:], reduction="none")
    return (ce * targets).sum(), int(targets.sum())


def response_targets(src: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """BoolTensor [B, L - 1]: the next-token targets of `ar_response_loss` (the response and its EOS),
    from the prompt ``src`` [B, L] and the answer ends ``lengths`` [B]."""
    positions = torch.arange(1, src.shape[1])
    return ~src[:, 1:] & (positions[None, :] < lengths[:, None])
