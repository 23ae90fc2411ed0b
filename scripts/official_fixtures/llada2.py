"""Write tests/fixtures/official/llada2.{safetensors,json}: what the OFFICIAL LLaDA 2.x modeling code
computes on the tiny checkpoint of tests/llada2_layouts.py. tests/test_llada2.py compares difflm with it.

This runs in a separate virtual environment with the transformers the official code needs (4.57.x), never
in difflm's; the official code is imported from a directory given on the command line and never enters
this repository (scripts/official_fixtures/README.md says where it comes from and how to run this).

    python scripts/official_fixtures/llada2.py --llada20 DIR/llada2/models --llada21 DIR/llada21/models \
        [--commit SHA] [--out tests/fixtures/official]

What it records (all fp32, attention "sdpa"):
* logits of an unpadded and a left-padded batch under a block-causal mask (blocks of BLOCK_LOGITS tiling
  each row from its first real token; padded keys hidden, the diagonal open; position ids count real tokens);
* logits of the two-copy block diffusion input [x_t | x_0] (BD3-LM's training mask) for the ELBO test;
* greedy generations of the official ``generate`` (LLaDA2.0's and LLaDA2.1's, token editing on and off).

One shim, outside the official code: its ``generate`` builds the block mask in bfloat16 (0 / -inf), which
torch's sdpa refuses next to float32 queries; the model's ``forward`` is wrapped to cast that mask to
float32 - 0 and -inf are exact in both, so the computation is the one the official code describes.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from llada2_layouts import EOS_ID, LLADA2, MASK_ID, write_llada2  # noqa: E402

BLOCK_LOGITS = 8  # a block size for the logits tests that puts several block boundaries in 36 tokens
LENGTH, PAD = 36, 5
PROMPT_LEN, GEN_LENGTH, GEN_BLOCK = 12, 52, 32  # prompt shares the first 32-token block with 20 new tokens
GENERATIONS = {  # name -> (which official generate, its keyword arguments)
    "llada20_t095": ("llada20", {"threshold": 0.95, "steps": 32}),
    "llada20_t07": ("llada20", {"threshold": 0.7, "steps": 32}),
    "llada21_quality": ("llada21", {"threshold": 0.7, "editing_threshold": 0.5, "max_post_steps": 16}),
    "llada21_speed": ("llada21", {"threshold": 0.5, "editing_threshold": 1.0, "max_post_steps": 16}),
}


def load_official(models_dir: Path, name: str):
    """The official package (its __init__ registers the Auto classes) imported from ``models_dir``."""
    spec = importlib.util.spec_from_file_location(name, models_dir / "__init__.py",
                                                  submodule_search_locations=[str(models_dir)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def block_mask(real: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(additive float mask [B, 1, L, L], position ids [B, L]) for block-causal attention on rows with
    left padding ``real`` (BoolTensor [B, L]): blocks tile each row from its first real token."""
    positions = (real.long().cumsum(-1) - 1).clamp(min=0)
    blocks = positions // block
    allowed = (blocks[:, :, None] >= blocks[:, None, :]) & real[:, None, :]
    allowed |= torch.eye(real.shape[1], dtype=torch.bool)
    return torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))[:, None], positions


def two_copy_mask(length: int, block: int) -> torch.Tensor:
    """BD3-LM's training mask over [x_t | x_0] (2L x 2L, additive): a noisy token of block b sees its own
    noisy block and the clean blocks before b; a clean token sees the clean blocks up to its own."""
    b = torch.arange(length) // block
    noisy_noisy = b[:, None] == b[None, :]
    noisy_clean = b[:, None] > b[None, :]
    clean_clean = b[:, None] >= b[None, :]
    top = torch.cat([noisy_noisy, noisy_clean], dim=1)
    bottom = torch.cat([torch.zeros_like(noisy_noisy), clean_clean], dim=1)
    allowed = torch.cat([top, bottom], dim=0)
    return torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))[None, None]


def float_mask_forward(model):
    """Wrap ``model.forward`` so a bfloat16 additive mask reaches sdpa as float32 (module doc)."""
    original = model.forward

    def forward(*args, attention_mask=None, **kwargs):
        if attention_mask is not None and attention_mask.dtype == torch.bfloat16:
            attention_mask = attention_mask.float()
        forward.calls += 1
        return original(*args, attention_mask=attention_mask, **kwargs)

    forward.calls = 0
    model.forward = forward
    return forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llada20", type=Path, required=True, help="the official llada2 models/ directory")
    parser.add_argument("--llada21", type=Path, required=True, help="the official llada21 models/ directory")
    parser.add_argument("--commit", default="unknown", help="commit of the repository the official code is from")
    parser.add_argument("--source", default="ZHZisZZ/dllm", help="repository the official code is from")
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "official")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    official = {"llada20": load_official(args.llada20, "official_llada20"),
                "llada21": load_official(args.llada21, "official_llada21")}
    tensors: dict[str, torch.Tensor] = {}
    record: dict = {"source": args.source, "commit": args.commit,
                    "files": {name: "/".join(getattr(args, name).resolve().parts[-4:]) + "/modeling_*_moe.py"
                              for name in ("llada20", "llada21")},
                    "transformers": __import__("transformers").__version__, "torch": torch.__version__,
                    "checkpoint": {"writer": "tests/llada2_layouts.py:write_llada2", "seed": 0, "dtype": "float32"},
                    "block_logits": BLOCK_LOGITS}
    with tempfile.TemporaryDirectory() as tmp:
        write_llada2(Path(tmp), seed=0)
        models = {name: pkg.LLaDA2MoeModelLM.from_pretrained(tmp, torch_dtype=torch.float32,
                                                             attn_implementation="sdpa").eval()
                  for name, pkg in official.items()}
    model = models["llada20"]
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, LLADA2["vocab_size"] - 3, (2, LENGTH), generator=g)
    ids[torch.rand(ids.shape, generator=g) < 0.3] = MASK_ID  # some masked positions
    real = torch.ones_like(ids, dtype=torch.bool)
    mask, positions = block_mask(real, BLOCK_LOGITS)
    tensors["input_ids"] = ids
    tensors["logits"] = model(ids, attention_mask=mask, position_ids=positions).logits.float()
    padded = ids.clone()
    padded[1, PAD:] = ids[1, :-PAD]
    padded[1, :PAD] = EOS_ID
    real_padded = torch.ones_like(ids, dtype=torch.bool)
    real_padded[1, :PAD] = False
    mask, positions = block_mask(real_padded, BLOCK_LOGITS)
    tensors["padded_input_ids"] = padded
    tensors["padded_attention_mask"] = real_padded.long()
    tensors["padded_logits"] = model(padded, attention_mask=mask, position_ids=positions).logits.float()
    # the ELBO: x0, a fixed noise mask and t; the official logits of the two-copy input
    x0 = torch.randint(0, LLADA2["vocab_size"] - 3, (1, LENGTH), generator=g)
    noise = torch.rand(x0.shape, generator=g) < 0.5
    xt = x0.masked_fill(noise, MASK_ID)
    pos = torch.arange(LENGTH)[None]
    out = model(torch.cat([xt, x0], 1), attention_mask=two_copy_mask(LENGTH, BLOCK_LOGITS),
                position_ids=torch.cat([pos, pos], 1)).logits.float()
    tensors.update(elbo_x0=x0, elbo_noise=noise.long(), elbo_t=torch.tensor([0.5]), elbo_logits=out[:, :LENGTH])
    # greedy generation
    prompt = torch.randint(0, LLADA2["vocab_size"] - 3, (1, PROMPT_LEN), generator=g)
    tensors["prompt"] = prompt
    record["generate"] = {}
    for name, (which, kwargs) in GENERATIONS.items():
        model = models[which]
        counter = float_mask_forward(model)
        full = dict(temperature=0.0, block_length=GEN_BLOCK, gen_length=GEN_LENGTH, eos_id=EOS_ID, mask_id=MASK_ID, **kwargs)
        generated = model.generate(prompt, **full)
        del model.forward  # back to the class's own
        record["generate"][name] = {"generate": which, "kwargs": full, "tokens": generated[0].tolist(),
                                    "forward_calls": counter.calls}
        print(f"{name}: {counter.calls} forward calls, {generated.shape[1]} tokens: {generated[0].tolist()}")
    args.out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(args.out / "llada2.safetensors"))
    (args.out / "llada2.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out / 'llada2.safetensors'} and {args.out / 'llada2.json'}")


if __name__ == "__main__":
    main()
