"""Build the bundled multimodal model dlm-digits from nothing but scikit-learn's bundled digits.

    python scripts/build_dlm_digits.py            # ~30 s data + image tokenizer, ~10-13 min training (1 thread)
    python scripts/build_dlm_digits.py --ar       # also the AR control (runs/multimodal-digits-ar), for bench/multimodal.py

Steps: `difflm data images --out runs/digits-data` (VQ-VAE, extended tokenizer, JSONL splits);
`difflm train configs/multimodal-digits.yaml`; the image tokenizer copied into the trained model;
`scripts/bundle_model.py ... --dtype bfloat16` into src/difflm/bundled/models/dlm-digits.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIFFLM = [sys.executable, "-m", "difflm"]


def run(command: list[str]) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, cwd=ROOT, check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ar", action="store_true", help="also train the AR control (configs/multimodal-digits-ar.yaml)")
    parser.add_argument("--skip-data", action="store_true", help="reuse runs/digits-data")
    args = parser.parse_args()
    if not args.skip_data:
        run(DIFFLM + ["data", "images", "--out", "runs/digits-data"])
    run(DIFFLM + ["train", "configs/multimodal-digits.yaml"])
    sys.path.insert(0, str(ROOT / "src"))
    from difflm.multimodal.prepare import attach_image_tokenizer

    attach_image_tokenizer(ROOT / "runs/digits-data/tokenizer", ROOT / "runs/multimodal-digits/model")
    run([sys.executable, "scripts/bundle_model.py", "runs/multimodal-digits", "dlm-digits", "--dtype", "bfloat16",
         "--command", "python scripts/build_dlm_digits.py (difflm data images --out runs/digits-data; "
         "difflm train configs/multimodal-digits.yaml)"])
    if args.ar:
        run(DIFFLM + ["train", "configs/multimodal-digits-ar.yaml"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
