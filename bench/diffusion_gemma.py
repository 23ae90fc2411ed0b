"""DiffusionGemma: difflm's renoising sampler against transformers' own ``generate()``, side by side in one run -
token identity on every configuration of a grid (seeds x canvas length x batch x stopping x EOS), and the
time each takes for the same tokens.

Models: tiny random DiffusionGemma checkpoints written by transformers itself (config classes +
``save_pretrained`` + a generation_config.json; tests/diffusion_gemma_layouts.py), loaded back by difflm
(`difflm.formats.load`); no hub checkpoint can be downloaded here. For each seed: ``torch.manual_seed(seed);
model.generate(...)`` under the saved generation config, then the same seed through difflm with
``random_stream="transformers"``; identical = the same sequences (difflm pads after transformers' early end)
and the same calls per row as transformers' tokens_per_forward says.

    .venv/bin/python bench/diffusion_gemma.py            # writes bench/results/diffusion_gemma.json,
                                                         # bench/diffusion_gemma.png, the RESULTS.md section
    .venv/bin/python bench/diffusion_gemma.py --seeds 3 --no-write
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from diffusion_gemma_layouts import PAD, write_diffusion_gemma  # noqa: E402
from training_report import machine, replace_section  # noqa: E402

from difflm import formats  # noqa: E402

SECTION = "## DiffusionGemma: difflm vs transformers' generate()"
PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]


def grid() -> list[dict]:
    """The configurations: canvas length, batch, adaptive stopping, EOS likelihood."""
    out = []
    for canvas, batch, stopping, eos in itertools.product((4, 8), ("alone", "left-padded 3"), ("adaptive", "off"),
                                                         ("rare", "likely")):
        out.append({"canvas": canvas, "batch": batch, "stopping": stopping, "eos": eos})
    return out


def run_config(cfg: dict, seeds: int, root: Path) -> dict:
    generation = {"max_new_tokens": 3 * cfg["canvas"], "max_denoising_steps": 8}
    if cfg["stopping"] == "adaptive":
        generation["confidence_threshold"] = 2.5  # nats of mean entropy (the vocabulary's 96 allow 4.6): it triggers
    else:
        generation["confidence_threshold"] = 1e-9  # a mean entropy this low never happens: every step runs
    path = root / "-".join(str(v) for v in cfg.values()).replace(" ", "_")
    reference = write_diffusion_gemma(path, canvas=cfg["canvas"], eos_boost=6.0 if cfg["eos"] == "likely" else 1.0,
                                      **generation)
    dlm = formats.load(path, dtype=torch.float32).model
    prompts = PROMPTS[:1] if cfg["batch"] == "alone" else PROMPTS
    width = max(map(len, prompts))
    ids = torch.tensor([[PAD] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    same, t_ref, t_ours, calls_ref, calls_ours = 0, [], [], 0, 0
    for seed in range(seeds):
        torch.manual_seed(seed)
        start = time.perf_counter()
        expected = reference.generate(ids, attention_mask=mask)
        t_ref.append(time.perf_counter() - start)
        torch.manual_seed(seed)
        start = time.perf_counter()
        got = dlm.generate(prompts, return_dict=True, random_stream="transformers")
        t_ours.append(time.perf_counter() - start)
        n = expected.sequences.shape[1]
        valid = (expected.sequences[:, width:] != PAD).sum(-1)
        calls_match = torch.allclose(valid / torch.tensor(got.row_calls), expected.tokens_per_forward.float())
        same += int(torch.equal(got.sequences[:, :n], expected.sequences) and bool((got.sequences[:, n:] == PAD).all())
                    and calls_match)
        calls_ref += int((valid / expected.tokens_per_forward).round().sum())
        calls_ours += sum(got.row_calls)
    return {**cfg, "seeds": seeds, "identical": same, "transformers_ms": 1000 * statistics.median(t_ref),
            "difflm_ms": 1000 * statistics.median(t_ours), "row_calls_transformers": calls_ref,
            "row_calls_difflm": calls_ours}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"c{r['canvas']} {r['batch'].split()[0]}\n{r['stopping']}, EOS {r['eos']}" for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(13, 4))
    ax.bar([i - 0.2 for i in x], [r["transformers_ms"] for r in rows], width=0.4, label="transformers generate()")
    ax.bar([i + 0.2 for i in x], [r["difflm_ms"] for r in rows], width=0.4, label="difflm (random_stream='transformers')")
    for i, r in enumerate(rows):
        ax.text(i, max(r["transformers_ms"], r["difflm_ms"]) * 1.02, f"{r['identical']}/{r['seeds']}", ha="center",
                fontsize=7)
    ax.set_xticks(list(x), labels, fontsize=6)
    ax.set_ylabel("median ms per generate (same tokens)")
    ax.set_title("DiffusionGemma (tiny random): identical runs / seeds above each pair")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def report(rows: list[dict], result: dict, command: str) -> str:
    total = sum(r["identical"] for r in rows)
    runs = sum(r["seeds"] for r in rows)
    lines = [SECTION, "", f"`{command}` ({result['date']}; {result['machine']}; torch threads 1). Tiny random "
             "DiffusionGemma checkpoints written by transformers' own classes (2 layers, hidden 32, 4 experts, vocabulary "
             "96), 3 canvases per run, 8 denoising steps at most, entropy bound 1.0, temperature 0.8 -> 0.4; `adaptive`: "
             "stable 1 step and mean entropy < 2.5 nats, `off`: confidence 1e-9 (every step runs); EOS `likely`: EOS's row of the "
             "head x6 (rows end inside a canvas).", "",
             f"**Token-identical on {total} of {runs} runs** (sequences and calls per row).", "",
             "| canvas | batch | stopping | EOS | identical | transformers ms | difflm ms | row calls (tf / difflm) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['canvas']} | {r['batch']} | {r['stopping']} | {r['eos']} | {r['identical']}/{r['seeds']} | "
                     f"{r['transformers_ms']:.0f} | {r['difflm_ms']:.0f} | {r['row_calls_transformers']} / "
                     f"{r['row_calls_difflm']} |")
    faster = sum(r["difflm_ms"] < r["transformers_ms"] for r in rows)
    stops = [r for r in rows if r["stopping"] == "adaptive"]
    fewer = sum(r["row_calls_transformers"] < next(o["row_calls_transformers"] for o in rows if o["stopping"] == "off"
                and all(o[k] == r[k] for k in ("canvas", "batch", "eos"))) for r in stops)
    lines += ["", f"Reading: difflm took less time than transformers on {faster} of {len(rows)} configurations for the same "
              "tokens (medians of one process, alternating runs on a shared machine: a comparison, not absolute speed; "
              "transformers' first call in a process also pays its warm-up). Adaptive stopping saved calls on "
              f"{fewer} of {len(stops)} adaptive configurations (where EOS is likely, i.e. the predictions are sure); on "
              "the others the random model's predictions never got confident enough - the same calls in both "
              "implementations either way.", "", "![DiffusionGemma identity and time](diffusion_gemma.png)", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for cfg in grid():
            rows.append(run_config(cfg, args.seeds, Path(tmp)))
            print(json.dumps(rows[-1]), file=sys.stderr)
    result = {"date": date.today().isoformat(), "machine": machine(), "rows": rows}
    if args.no_write:
        return
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "diffusion_gemma.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(rows, HERE / "diffusion_gemma.png")
    command = "python bench/diffusion_gemma.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    path = HERE / "RESULTS.md"
    path.write_text(replace_section(path.read_text(), SECTION, report(rows, result, command)))


if __name__ == "__main__":
    main()
