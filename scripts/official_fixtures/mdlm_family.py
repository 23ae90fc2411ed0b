"""Write the official-output fixtures of the MDLM family (MDLM, BD3-LM, UDLM, Duo).

Runs in a SEPARATE virtual environment (the official code needs einops / omegaconf / huggingface_hub and
an older transformers; see README.md, "## MDLM family"), never in difflm's. It imports the official
modeling code from checkouts given on the command line (nothing of it is copied here), loads the tiny
checkpoints of tests/mdlm_layouts.py (same seeds as the tests), and writes
tests/fixtures/official/<family>.safetensors (inputs, noise, official logits / losses) + <family>.json
(sources, commits, what each tensor is).

    /tmp/mdlm-venv/bin/python scripts/official_fixtures/mdlm_family.py \
        --mdlm /tmp/official/mdlm --bd3lm /tmp/official/bd3lms --udlm /tmp/official/udlm --duo /tmp/official/duo

flash_attn (CUDA only) is imported by the MDLM, UDLM and Duo files; a stand-in module is installed
before they are imported (see `_flash_attn_stand_in`): rotary = the half-split rotation of the same
authors' non-flash path (bd3lms modeling_bd3lm.py `apply_rotary_pos_emb_torchscript`), varlen attention
over equal-length, non-causal sequences = torch's scaled_dot_product_attention (what bd3lms' sdpa backend
calls).

UDLM's and Duo's uniform-state losses are run from their training modules (UDLM diffusion.py, Duo
trainer_base.py + algo.py): the official loss methods, unchanged, on a stand-in `self` that holds the
attributes they read (`_stand_in`), with the packages they import but the loss never uses replaced by empty
modules (`_UNUSED`). Their noise comes from torch's global RNG after torch.manual_seed(LOSS_SEED); the script
replays those draws (`_replayed_draws`) and stores them with x_t.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
import mdlm_layouts as layouts  # noqa: E402  (torch + safetensors only)

COMMITS = {  # the commits of the official files read (see README.md)
    "mdlm": ("kuleshov-group/mdlm", "c112c526d193436838c98d81455ee51f90309470", ["models/dit.py"]),
    "bd3lm": ("kuleshov-group/bd3lms", "1c3e8f43d88dfbcee5ff2aa6932a9e74b31ae1d7",
              ["models/hf/configuration_bd3lm.py", "models/hf/modeling_bd3lm.py"]),
    "udlm": ("kuleshov-group/discrete-diffusion-guidance", "edb0f8c28b7caeb4ea7a06a2fee8d74ab6da1661",
             ["models/hf/configuration_udlm.py", "models/hf/modeling_udlm.py", "diffusion.py", "noise_schedule.py"]),
    "duo": ("s-sahoo/duo", "7c9b498f5b717de064d6fad7e2509c866e6cb620",
            ["models/dit.py", "trainer_base.py", "algo.py", "utils.py"]),
}
NEG_INFINITY = -1000000.0  # the SUBS constant of MDLM / BD3-LM's diffusion.py


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def _flash_attn_stand_in() -> None:
    """sys.modules['flash_attn'] with the three functions the official files call (see module doc)."""
    flash = types.ModuleType("flash_attn")
    layers = types.ModuleType("flash_attn.layers")
    rotary = types.ModuleType("flash_attn.layers.rotary")
    interface = types.ModuleType("flash_attn.flash_attn_interface")

    def apply_rotary_emb_torch(x, cos, sin, interleaved=False):  # x [b, s, h, d]; cos/sin [s, d/2]
        assert not interleaved
        cos, sin = torch.cat((cos, cos), -1)[None, :, None, :], torch.cat((sin, sin), -1)[None, :, None, :]
        return x * cos + _rotate_half(x) * sin

    def apply_rotary_emb_qkv_(qkv, cos, sin, *args, **kwargs):  # qkv [b, s, 3, h, d]: q and k rotate
        qkv[:, :, 0] = apply_rotary_emb_torch(qkv[:, :, 0], cos, sin)
        qkv[:, :, 1] = apply_rotary_emb_torch(qkv[:, :, 1], cos, sin)
        return qkv

    def flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen, dropout_p=0.0, causal=False, **kwargs):
        assert dropout_p == 0.0 and not causal
        total, _, heads, dim = qkv.shape
        q, k, v = qkv.view(total // max_seqlen, max_seqlen, 3, heads, dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # [b, h, s, d]
        return out.transpose(1, 2).reshape(total, heads, dim)

    rotary.apply_rotary_emb_torch = apply_rotary_emb_torch
    rotary.apply_rotary_emb_qkv_ = apply_rotary_emb_qkv_
    interface.flash_attn_varlen_qkvpacked_func = flash_attn_varlen_qkvpacked_func
    flash.layers, layers.rotary, flash.flash_attn_interface = layers, rotary, interface
    sys.modules.update({"flash_attn": flash, "flash_attn.layers": layers, "flash_attn.layers.rotary": rotary,
                        "flash_attn.flash_attn_interface": interface})


def _module(name: str, path: Path, package_dir: Path | None = None) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(
        name, path, submodule_search_locations=[str(package_dir)] if package_dir else None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _strip(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("backbone."): v for k, v in weights.items() if k.startswith("backbone.")}


def _inputs(seed: int, batch: int = 3) -> dict[str, torch.Tensor]:
    """x0 [B, n] (ids below the MDLM mask id), a noise mask, per-row t, per-block t (block 4), row lengths."""
    n, vocab = layouts.SIZES["model_length"], layouts.SIZES["vocab_size"]
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randint(0, vocab - 1, (batch, n), generator=g)
    t = torch.rand(batch, generator=g) * 0.8 + 0.1
    t_block = (torch.rand(batch, n // 4, generator=g) * 0.8 + 0.1).repeat_interleave(4, dim=1)
    noise = torch.rand(batch, n, generator=g) < t_block
    noise[:, 0] = True  # at least one masked position per row
    lengths = torch.tensor([n, n - 5, n - 3])[:batch]
    return {"x0": x0, "t": t, "t_block": t_block, "noise": noise, "lengths": lengths}


def _subs_loss(raw: torch.Tensor, xt: torch.Tensor, x0: torch.Tensor, weight: torch.Tensor, mask_id: int) -> torch.Tensor:
    """The official continuous-time SUBS loss (diffusion.py `_subs_parameterization` then
    `_forward_pass_diffusion` / `_loss`): -log p(x0) * weight at masked positions (0 elsewhere, where SUBS
    copies the input), summed and divided by B * L. weight [B, L] = 1/t."""
    logits = raw.clone()
    logits[:, :, mask_id] += NEG_INFINITY
    logits = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    unmasked = xt != mask_id
    logits[unmasked] = NEG_INFINITY
    logits[unmasked, xt[unmasked]] = 0
    log_p = logits.gather(-1, x0[..., None]).squeeze(-1)
    return (-log_p * weight).sum() / x0.numel()


# -- the official losses (uniform-state): the training modules run on a stand-in `self` ------------------
LOSS_SEED = 5  # torch's global RNG, seeded right before the official loss draws its noise
# modules the training files import but the loss never touches (datasets, metrics, plotting, mamba, ...)
_UNUSED = {"mamba_ssm": {}, "mamba_ssm.utils": {}, "mamba_ssm.utils.generation": {"InferenceParams": None},
           "classifier": {"Classifier": object}, "dataloader": {}, "models": {}, "metrics": {}, "scipy": {}, "scipy.integrate": {"quad": None},
           "scipy.optimize": {"curve_fit": None}, "scipy.stats": {"norm": None}, "timm": {}, "timm.scheduler": {
               "CosineLRScheduler": type("CosineLRScheduler", (), {})}}
_REPO_LOCAL = ("classifier", "dataloader", "models", "metrics")


def _training_module(name: str, root: Path, file: str) -> types.ModuleType:
    """Import a training module (diffusion.py / algo.py) of ``root`` with stand-ins for what it imports
    but the loss does not use (`_UNUSED`, only where the real package is missing)."""
    for real in ("lightning", "torchmetrics", "hydra", "omegaconf", "transformers"):
        importlib.import_module(real)  # first: they probe for optional packages such as scipy, stubbed below
    stubbed: set[str] = set()
    for mod, attrs in _UNUSED.items():
        top = mod.split(".")[0]
        missing = top in stubbed or (top not in sys.modules and importlib.util.find_spec(top) is None)
        if mod in _REPO_LOCAL or missing:  # the repository's own data / model packages: never imported for real
            stubbed.add(top)
            stub = types.ModuleType(mod)
            stub.__dict__.update(attrs)
            sys.modules[mod] = stub
    for local in ("noise_schedule", "utils", "trainer_base"):  # the other repository's files of the same name
        sys.modules.pop(local, None)
    sys.path.insert(0, str(root))
    try:
        return _module(name, root / file)
    finally:
        sys.path.remove(str(root))


def _stand_in(name: str, methods: dict, **attrs) -> object:
    """An object whose methods are the official functions ``methods`` and whose attributes are ``attrs``:
    the official code runs unchanged on it (no Lightning module, optimizer or data is built)."""
    obj = type(name, (), methods)()
    obj.__dict__.update(attrs)
    return obj


def _replayed_draws(shape: tuple[int, ...], vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The draws the official q(x_t | x0) makes after torch.manual_seed(LOSS_SEED): torch.rand for the
    replace decision, then torch.randint for the uniform tokens (both references, on the CPU)."""
    torch.manual_seed(LOSS_SEED)
    u = torch.rand(*shape)
    return u, torch.randint(0, vocab, shape)


def udlm_loss(root: Path, model, x0: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
    """diffusion.py `Diffusion._loss` as udlm-lm1b was trained and evaluated (scripts/train_lm1b.sh, MODEL=udlm:
    diffusion uniform, parameterization d3pm, T 0, time_conditioning, zero_recon_loss; log-linear noise)."""
    diffusion = _training_module("official_udlm_diffusion", root, "diffusion.py")
    from omegaconf import OmegaConf  # noqa: PLC0415 - only in the official code's environment

    D = diffusion.Diffusion
    seen: dict[str, torch.Tensor] = {}

    def forward(self, x, sigma, cond=None, x_emb=None, **kwargs):
        seen.setdefault("xt", x.clone())
        return D.forward(self, x, sigma, cond, x_emb, **kwargs)

    config = OmegaConf.create({"noise": {"type": "loglinear"}, "zero_recon_loss": True, "model": {"length": x0.shape[1]},
                               "training": {"use_simple_ce_loss": False, "compute_loss_on_pad_tokens": False,
                                            "guidance": None}})
    methods = {k: getattr(D, k) for k in ("_loss", "_maybe_sub_sample", "_forward_pass_diffusion", "_q_xt",
                                          "_process_sigma", "_reconstruction_loss")}
    vocab = layouts.SIZES["vocab_size"]
    self = _stand_in("OfficialUDLM", {**methods, "forward": forward, "_sample_t": lambda self, n: t.clone()},
                     config=config, T=0, change_of_variables=False, importance_sampling=False, diffusion="uniform",
                     parameterization="d3pm", subs_masking=False, time_conditioning=True, training=False,
                     vocab_size=vocab, mask_index=vocab, neg_infinity=-1_000_000.0, dtype=torch.float32,
                     device=torch.device("cpu"), noise=sys.modules["noise_schedule"].LogLinearNoise(),
                     backbone=lambda x, sigma, cond=None, x_emb=None: model(x, timesteps=sigma, return_dict=True).logits)
    torch.manual_seed(LOSS_SEED)
    with torch.no_grad():
        out = self._loss(x0, torch.ones_like(x0))
    u, tokens = _replayed_draws(tuple(x0.shape), vocab)
    return {"loss_u": u, "loss_noise_tokens": tokens, "loss_xt": seen["xt"],
            "loss_token_nll": out.nlls, "loss": out.loss.reshape(1)}


def duo_loss(root: Path, model, x0: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
    """The evaluation NLL of Duo (algo=duo_base, scripts/eval_owt_duo.sh): trainer_base `TrainerBase._loss`
    -> `Diffusion.nll` (log-linear eps 1e-3, uniform q_xt, ignore_bos false) -> algo `DUO_BASE.nll_per_token`."""
    algo = _training_module("official_duo_algo", root, "algo.py")
    base = sys.modules["trainer_base"]
    TB, Dif, US, DB = base.TrainerBase, base.Diffusion, base.UniformState, algo.DUO_BASE
    seen: dict[str, torch.Tensor] = {}

    def forward(self, xt, sigma, labels=None, weights=None, nn_input_idxs=None):
        seen.setdefault("xt", xt.clone())
        return TB.forward(self, xt, sigma, labels, weights, nn_input_idxs)

    def nll_per_token(self, **kwargs):
        seen["token_nll"] = DB.nll_per_token(self, **kwargs)
        return seen["token_nll"]

    methods = {"_loss": TB._loss, "_process_model_input": Dif._process_model_input, "nll": Dif.nll,
               "_sigma_from_alphat": Dif._sigma_from_alphat, "q_xt": US.q_xt, "_process_sigma": Dif._process_sigma,
               "_process_model_output": DB._process_model_output, "forward": forward, "nll_per_token": nll_per_token,
               "_sample_t": lambda self, n, accum_step: t.clone()}
    vocab = layouts.SIZES["vocab_size"]
    self = _stand_in("OfficialDuo", methods, T=0, noise=base.LogLinear(1e-3), ignore_bos=False,
                     class_conditional=False, time_conditioning=True, vocab_size=vocab, loss_type="elbo",
                     dtype=torch.float32, device=torch.device("cpu"),
                     backbone=lambda x, sigma, class_cond=None, weights=None: model(x, sigma))
    torch.manual_seed(LOSS_SEED)
    with torch.no_grad():
        out = self._loss(x0, None, torch.ones_like(x0))
    u, tokens = _replayed_draws(tuple(x0.shape), vocab)
    return {"loss_u": u, "loss_noise_tokens": tokens, "loss_xt": seen["xt"],
            "loss_token_nll": seen["token_nll"], "loss": out.loss.reshape(1)}


def mdlm(root: Path, ckpt: Path) -> dict[str, torch.Tensor]:
    dit = _module("official_mdlm_dit", root / "models/dit.py")
    s = layouts.SIZES
    cfg = {"model": {"hidden_size": s["hidden_dim"], "cond_dim": s["cond_dim"], "n_heads": s["n_heads"],
                     "n_blocks": s["n_blocks"], "dropout": s["dropout"], "scale_by_sigma": False}}
    model = dit.DIT(cfg, vocab_size=s["vocab_size"]).eval()
    model.load_state_dict(_strip(load_file(ckpt / "model.safetensors")), strict=True)
    inp = _inputs(101)
    x0, mask_id = inp["x0"], s["vocab_size"] - 1
    sigma0 = torch.zeros(x0.shape[0])  # time_conditioning false: diffusion.py feeds sigma = 0
    with torch.no_grad():
        out = {"logits": model(x0, sigma0)}
        for b, n in enumerate(inp["lengths"].tolist()):  # each row alone, unpadded (the reference of padding tests)
            out[f"row{b}_logits"] = model(x0[b : b + 1, :n], sigma0[:1])[0]
        xt = torch.where(inp["noise"], mask_id, x0)
        raw = model(xt, sigma0)
        out["noisy_logits"] = raw
        out["loss"] = _subs_loss(raw, xt, x0, (1 / inp["t"])[:, None].expand_as(x0), mask_id).reshape(1)
    return {**inp, **out}


def bd3lm(root: Path, ckpt: Path) -> dict[str, torch.Tensor]:
    hf = _module("official_bd3lm_hf", root / "models/hf/__init__.py", root / "models/hf")
    config = json.loads((ckpt / "config.json").read_text())
    config = {k: v for k, v in config.items() if k not in ("model_type", "architectures", "auto_map")}
    model = hf.BD3LM(hf.BD3LMConfig(**config)).eval()
    model.load_state_dict(load_file(ckpt / "model.safetensors"), strict=True)
    inp = _inputs(202)
    x0, mask_id = inp["x0"], config["vocab_size"] - 1
    sigma0 = torch.zeros(x0.shape[0])
    with torch.no_grad():
        out = {"sample_logits": model(x0, timesteps=sigma0, sample_mode=True, return_dict=True).logits}
        for b, n in enumerate(inp["lengths"].tolist()):
            out[f"row{b}_logits"] = model(x0[b : b + 1, :n], timesteps=sigma0[:1], sample_mode=True,
                                          return_dict=True).logits[0]
        xt = torch.where(inp["noise"], mask_id, x0)
        raw = model(torch.cat([xt, x0], dim=1), timesteps=sigma0, return_dict=True).logits  # two-copy training forward
        out["noisy_logits"] = raw
        out["loss"] = _subs_loss(raw, xt, x0, 1 / inp["t_block"], mask_id).reshape(1)
    return {**inp, **out}


def udlm(root: Path, ckpt: Path) -> dict[str, torch.Tensor]:
    hf = _module("official_udlm_hf", root / "models/hf/__init__.py", root / "models/hf")
    config = json.loads((ckpt / "config.json").read_text())
    config = {k: v for k, v in config.items() if k not in ("model_type", "architectures", "auto_map")}
    model = hf.UDLM(hf.UDLMConfig(**config)).eval()
    weights = load_file(ckpt / "model.safetensors")
    model.load_state_dict(weights, strict=True)
    inp = _inputs(303)
    x0 = inp["x0"]
    sigma = inp["t"]  # any per-row time input: the model is time-conditioned
    with torch.no_grad():
        out = {"logits": model(x0, timesteps=sigma, return_dict=True).logits}
        for b, n in enumerate(inp["lengths"].tolist()):
            out[f"row{b}_logits"] = model(x0[b : b + 1, :n], timesteps=sigma[b : b + 1], return_dict=True).logits[0]
    out.update(udlm_loss(root, model, x0, inp["t"]))
    return {**inp, **out}


def duo(root: Path, ckpt: Path) -> dict[str, torch.Tensor]:
    dit = _module("official_duo_dit", root / "models/dit.py")
    s = layouts.SIZES
    cfg = {"algo": {"causal_attention": False},
           "model": {"hidden_size": s["hidden_dim"], "cond_dim": s["cond_dim"], "n_heads": s["n_heads"],
                     "n_blocks": s["n_blocks"], "dropout": s["dropout"], "scale_by_sigma": False}}
    model = dit.DIT(cfg, vocab_size=s["vocab_size"]).eval()
    model.load_state_dict(_strip(load_file(ckpt / "model.safetensors")), strict=True)
    inp = _inputs(404)
    x0, sigma = inp["x0"], inp["t"]
    with torch.no_grad():
        out = {"logits": model(x0, sigma)}
        for b, n in enumerate(inp["lengths"].tolist()):
            out[f"row{b}_logits"] = model(x0[b : b + 1, :n], sigma[b : b + 1])[0]
    out.update(duo_loss(root, model, x0, inp["t"]))
    return {**inp, **out}


RUNNERS = {"mdlm": mdlm, "bd3lm": bd3lm, "udlm": udlm, "duo": duo}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in RUNNERS:
        parser.add_argument(f"--{name}", type=Path, help=f"checkout of {COMMITS[name][0]} at {COMMITS[name][1][:7]}")
    parser.add_argument("--out", type=Path, default=ROOT / "tests/fixtures/official")
    args = parser.parse_args()
    _flash_attn_stand_in()
    torch.manual_seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, run in RUNNERS.items():
        root = getattr(args, name)
        if root is None:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = layouts.WRITERS[name](Path(tmp) / name)
            tensors = run(root, ckpt)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(args.out / f"{name}.safetensors"))
        repo, commit, files = COMMITS[name]
        meta = {"family": name, "repo": repo, "commit": commit, "files": files, "seed": layouts.SEEDS[name],
                "torch": torch.__version__, "dtype": "float32", "tensors": sorted(tensors)}
        (args.out / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")
        print(name, {k: tuple(v.shape) for k, v in tensors.items()})


if __name__ == "__main__":
    main()
