"""`difflm generate` / `difflm infill` for a continuous DLM: the commands call `run` when ``--model``
is a continuous model directory (it holds continuous_config.json).

The flags that mean the same for both families are used as they are (``--length``, ``--steps``,
``--cfg-scale``, ``--seed``, ``--device``, ``--json``, ``--show-steps``); ``--eta`` (0 = DDIM,
1 = DDPM) and ``--clamp`` are the continuous sampler's own. A flag of the masked sampler with a
non-default value is refused: nothing is silently ignored.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from ..errors import InputError, ModelLoadError

# masked-sampler flags and their defaults: a continuous model has no use for them
MASKED_ONLY = {"strategy": None, "block_length": None, "temperature": 0.0, "top_p": 1.0, "top_k": 0,
               "gumbel": False, "threshold": None, "alg_temp": 0.0, "cache": "none", "attention": None,
               "schedule": None, "filter_order": None, "sub_block_length": None, "editing_threshold": None,
               "remask": 0.0, "stop_at_eos": False, "suppress_eos": False, "chat": False}


def continuous_model_dir(name_or_path: str) -> Any:
    """The directory of ``name_or_path`` if it is a continuous DLM, else None."""
    from ..bundled import resolve_model
    from .config import is_continuous_model

    path = resolve_model(name_or_path)
    return path if is_continuous_model(path) else None


def run(args: argparse.Namespace, templates_of: Any, labels: list[str]) -> int:
    """Sample and print for a continuous model. ``templates_of(tokenizer)`` gives the token templates
    (`difflm.continuous.sampler.UNKNOWN` at the positions to generate)."""
    import torch

    from .. import rng
    from .model import ContinuousDLM
    from .sampler import ContinuousSamplerOptions, fill_templates

    given = [f"--{k.replace('_', '-')}" for k, default in MASKED_ONLY.items() if getattr(args, k, default) != default]
    if given:
        raise InputError(f"{', '.join(given)}: not an option of a continuous DLM's sampler (it takes --steps, "
                         "--eta, --clamp, --cfg-scale)")
    path = continuous_model_dir(args.model)
    model = ContinuousDLM.from_pretrained(path, device=args.device)
    if model.tokenizer is None:
        raise ModelLoadError(f"{path} has no tokenizer; text prompts need one")
    templates = templates_of(model.tokenizer)
    longest = max(len(t) for t in templates)
    if model.max_length is not None and longest > model.max_length:
        raise InputError(f"{longest} tokens exceed the model's context of {model.max_length}; shorten the prompt")
    n_new = max(sum(1 for i in t if i < 0) for t in templates)
    options = ContinuousSamplerOptions(steps=args.steps or n_new, eta=args.eta, clamp=args.clamp,
                                       cfg_scale=args.cfg_scale)
    callback = None
    if args.show_steps:
        def callback(step: int, tokens: torch.Tensor) -> None:
            text = model.tokenizer.decode(tokens[0].tolist(), skip_special_tokens=True)
            print(f"[{step}/{options.steps}] {text}", file=sys.stderr)
            time.sleep(args.delay)

    start = time.perf_counter()
    rows, generated = fill_templates(model, templates, options=options, generator=rng.seeded_generator(args.seed),
                                     callback=callback)
    seconds = time.perf_counter() - start
    for b, label in enumerate(labels):
        width = len(templates[b])
        row = rows[b, rows.shape[1] - width :].tolist()
        new = rows[b][generated[b]].tolist()
        text = model.tokenizer.decode(row, skip_special_tokens=True)
        if args.json:
            print(json.dumps({"prompt": label, "text": text, "generated": model.tokenizer.decode(new, skip_special_tokens=True),
                              "new_tokens": new, "steps": options.steps, "seconds": round(seconds, 4),
                              "tokens_per_second": round(int(generated.sum()) / seconds, 2),
                              "options": {**options.__dict__, "family": "continuous"}}))
        else:
            print(text)
    return 0
