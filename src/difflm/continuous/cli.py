"""`difflm generate` / `difflm infill` for a continuous DLM: the runner of the continuous family's
plug-in (`difflm.continuous.plugin`), called once ``--model`` is a continuous model directory (it
holds continuous_config.json).

The flags that mean the same for both families are used as they are (``--length``, ``--steps``,
``--cfg-scale``, ``--seed``, ``--device``, ``--json``, ``--show-steps``); ``--eta`` (0 = DDIM,
1 = DDPM) and ``--clamp`` are the continuous sampler's own. A flag of the masked sampler's group with a
non-default value is refused: nothing is silently ignored.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import torch

from .. import rng
from ..bundled import resolve_model
from ..errors import InputError, ModelLoadError
from .model import ContinuousDLM
from .sampler import UNKNOWN, ContinuousSamplerOptions, fill_templates


def run(args: argparse.Namespace, job: Any) -> int:
    """Sample and print for a continuous model. ``job`` is the command's `difflm.cli.family.GenerationJob`:
    its ``templates(tokenizer, UNKNOWN)`` are the token templates, its ``masked_flags`` the masked
    sampler's flags the command line set (refused)."""
    if job.masked_flags:
        raise InputError(f"{', '.join(job.masked_flags)}: not an option of a continuous DLM's sampler (it takes "
                         "--steps, --eta, --clamp, --cfg-scale)")
    path = resolve_model(args.model)
    model = ContinuousDLM.from_pretrained(path, device=args.device)
    if model.tokenizer is None:
        raise ModelLoadError(f"{path} has no tokenizer; text prompts need one")
    templates = job.templates(model.tokenizer, UNKNOWN)
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
    for b, label in enumerate(job.labels):
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
