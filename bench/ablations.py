"""DiffuLLaMA's Table 3 and the adapted-vs-scratch gap by size, through `difflm experiment ablations`,
written into bench/RESULTS.md with the paper's numbers beside ours.

    python bench/ablations.py                 # runs (or continues, or just reads) runs/ablations
    python bench/ablations.py --quick --no-write   # the pipeline in minutes, RESULTS.md untouched

The experiment itself is resumable: rerunning this after a stop continues it; once it is finished
this only rewrites the section (results/ablations.json, ablations.png, RESULTS.md).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from training_report import machine, replace_section  # noqa: E402

from difflm.experiments.ablations import run_ablations  # noqa: E402
from difflm.experiments.report import ARM_HEADER, SIZE_HEADER, arm_rows, markdown_table, size_rows  # noqa: E402

RESULTS_MD, PLOT, RESULTS_JSON = HERE / "RESULTS.md", HERE / "ablations.png", HERE / "results" / "ablations.json"
SECTION = "## Ablations: DiffuLLaMA Table 3 and the adapted-vs-scratch gap"
# The paper's orderings on GPT-2 S and M (Table 3): (better arm, worse arm).
ORDERINGS = [("diffusion", "no-anneal"), ("diffusion", "no-shift"), ("no-anneal", "no-shift"), ("diffusion", "ar")]


def _se(spread: dict[str, Any]) -> float:
    """Standard error of a mean over seeds."""
    return spread["sd"] / spread["n"] ** 0.5


def _verdict(diff: float, se: float) -> str:
    if diff > 2 * se:
        return "holds"
    return "reversed" if diff < -2 * se else "not resolved (within two standard errors)"


def orderings(results: dict[str, Any]) -> list[str]:
    """Each of the paper's orderings: does it hold here, by how much, against the standard error of
    the difference over seeds; then each arm against guessing without a model."""
    lines = []
    arms = results["arms"]
    for better, worse in ORDERINGS:
        a, b = arms[better]["exact_match"], arms[worse]["exact_match"]
        if not a.get("n") or not b.get("n"):
            continue
        paper = [x - y for x, y in zip(arms[better]["paper"], arms[worse]["paper"])]
        diff, se = a["mean"] - b["mean"], (_se(a) ** 2 + _se(b) ** 2) ** 0.5
        line = (f"- {arms[better]['label']} > {arms[worse]['label']} (paper: +{paper[0]:.1f} / +{paper[1]:.1f} "
                f"points): here {diff:+.1f} ± {se:.1f} points - {_verdict(diff, se)}")
        la, lb = arms[better]["sft_val_loss"], arms[worse]["sft_val_loss"]
        if worse != "ar" and la.get("n") and lb.get("n"):  # two ELBO bounds on the same data: comparable
            gap, gse = lb["mean"] - la["mean"], (_se(la) ** 2 + _se(lb) ** 2) ** 0.5
            line += (f"; SFT validation bound {la['mean']:.3f} vs {lb['mean']:.3f} ({gap:+.3f} ± {gse:.3f} nats/token "
                     f"in its favour: {_verdict(gap, gse)})")
        lines.append(line)
    chance = results.get("chance")
    if chance:
        floor = max(chance["most_common"], chance["frequency_guess"])
        for arm in arms.values():
            em = arm["exact_match"]
            if em.get("n"):
                above = em["mean"] - floor
                word = "above" if above > 2 * _se(em) else "not above"
                lines.append(f"- {arm['label']}: {em['mean']:.1f}% is {word} the no-model baseline ({floor:.1f}%) "
                             f"by two standard errors ({2 * _se(em):.1f})")
    return lines


def markdown(results: dict[str, Any], command: str) -> str:
    s = results["settings"]
    b = s["budget"]
    seconds = sum(x["seconds"] for x in results.get("sessions", []))
    sft_tokens = b["sft_steps"] * b["batch_size"] * s["sft_block"]
    a_tokens = b["stage_a_steps"] * b["batch_size"] * b["block_size"]
    lines = [SECTION, "",
             f"`{command}` ({time.strftime('%Y-%m-%d')}); machine: {machine()}; {len(b['seeds'])} seeds per arm, "
             f"two runs at a time (one thread each); wall time {seconds / 60:.0f} min over "
             f"{len(results.get('sessions', []))} invocation(s).", "",
             f"Every arm starts from the bundled `ar-base` (6.8 M parameters) and spends the same compute: stage A, "
             f"{b['stage_a_steps']} steps x {b['batch_size']} x {b['block_size']} tokens ({a_tokens / 1e6:.2f} M) on the "
             f"bundled corpus - adaptation (annealing over the first third, or none; shift, or none), continued AR "
             f"pretraining, or a DLM from random weights; stage B, {b['sft_steps']} steps of SFT ({sft_tokens / 1e6:.2f} M "
             f"tokens) on {b['n_train']} `gsm` problems ({b['gsm_steps']} steps, numbers {b['gsm_numbers']}); exact match "
             f"on {b['n_test']} test problems (the DLMs one token per call in blocks of 8 with the prefix cache, the AR "
             f"model greedy). Paper: GPT-2 S / M after adaptation on ~30 B tokens, GSM8K-symbolic.", "",
             markdown_table(ARM_HEADER, arm_rows(results)), "", "Orderings of the paper, and each arm against guessing:", "", *orderings(results), "",
             f"Sizes: the adapted DLM (for the sizes trained here an AR base first, {b['pretrain_steps']} steps of "
             f"next-token pretraining; then the full recipe above) against the DLM from scratch of the same size, the "
             f"same stage A and SFT; seeds {', '.join(map(str, b['seeds'][: b['size_seeds']]))} for the smaller sizes, "
             f"the main table's seeds for the base.", "",
             markdown_table(SIZE_HEADER, size_rows(results)), "",
             "![validation curves of every arm: stage A, SFT, SFT by size](ablations.png)", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/ablations"), help="experiment directory")
    parser.add_argument("--quick", action="store_true", help="tiny budgets (numbers meaningless)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time")
    parser.add_argument("--no-write", action="store_true", help="print the section, write nothing under bench/")
    args = parser.parse_args()
    results = run_ablations(args.out, quick=args.quick, workers=args.jobs)
    command = "python bench/ablations.py" + (" --quick" if args.quick else "")
    body = markdown(results, command)
    print(body)
    if not args.no_write and not args.quick:
        RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.out / "results.json", RESULTS_JSON)
        shutil.copyfile(args.out / "curves.png", PLOT)
        RESULTS_MD.write_text(replace_section(RESULTS_MD.read_text(), SECTION, body))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
