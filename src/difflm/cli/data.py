"""`difflm data make TASK --n N --seed S --out FILE` (synthetic task suites) and `difflm data check FILE`
(what an SFT file turns into: prompt, response, token counts)."""

from __future__ import annotations

import argparse

from ..registry import DATA_SPLITS, DATA_TASKS, GSM_SUMS
from . import integer


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data", help="write synthetic task suites (gsm, sudoku, countdown) and image-text sets; check SFT files",
        description="Synthetic task suites for fine-tuning and evaluation (docs/tasks.md), and a check of SFT data.",
    )
    commands = parser.add_subparsers(dest="data_command", metavar="ACTION")
    commands.required = True
    make = commands.add_parser(
        "make", help="write N examples of a task to a JSONL file",
        description="Write N distinct examples of TASK as JSONL. The same arguments always write the same file, "
        "and the splits (train, validation, test) never share a problem, whatever the seeds. "
        "gsm: GSM8K layout {question, answer ending '#### N'} (difflm eval --tasks gsm8k=FILE); "
        "sudoku: {puzzle: 81 chars, 0 = blank, solution: 81 digits} (difflm eval --tasks sudoku=FILE); "
        "countdown: {numbers, target, solution: 'x op y = z' lines} (difflm eval --tasks countdown=FILE).",
    )
    make.add_argument("task", choices=DATA_TASKS.names(), help="the task: " + ", ".join(DATA_TASKS.names()))
    make.add_argument("--n", type=int, required=True, help="number of examples")
    make.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    make.add_argument("--split", choices=DATA_SPLITS, default="train",
                      help="which split to draw from (default: %(default)s); train/validation/test are disjoint")
    make.add_argument("--out", required=True, help="JSONL file to write (replaced atomically)")
    make.add_argument("--steps", metavar="K or LOW-HIGH",
                      help="gsm: arithmetic steps per problem (default: 2-4)")
    make.add_argument("--numbers", metavar="LOW-HIGH",
                      help="gsm: range of the numbers in a problem (default: 2-20); countdown: range of the given "
                      "numbers (default: 1-50)")
    make.add_argument("--sums", choices=GSM_SUMS,
                      help="gsm: a total of several terms in one sum (whole, default) or one term at a time (pairwise); "
                      "the reasoning only, the problems are the same")
    make.add_argument("--count", metavar="K or LOW-HIGH", help="countdown: how many numbers are given (default: 3-4)")
    make.add_argument("--blanks", metavar="K or LOW-HIGH",
                      help="sudoku: blank cells per puzzle (default: 30-50; at most 56 with unique solutions)")
    make.add_argument("--no-unique", dest="unique", action="store_false",
                      help="sudoku: also puzzles with several solutions (default: exactly one)")
    make.set_defaults(func=run_make, unique=None)
    check = commands.add_parser(
        "check", help="show what an SFT file trains on: prompt, response and token counts",
        description="Read an SFT JSONL file (chat messages, prompt/response, or a task's records), format every "
        "line as training does and report the token counts; with --block-size, fail (naming the line) when an "
        "example does not fit.",
    )
    check.add_argument("file", help="SFT JSONL file")
    check.add_argument("--tokenizer", default="bundled", help="tokenizer directory (default: the bundled one)")
    check.add_argument("--seq-length", "--block-size", type=integer(1), dest="seq_length",
                       help="the training seq_length to check the examples against (--block-size: its old name)")
    check.add_argument("--show", type=integer(0), default=1, metavar="N", help="print the first N examples (default: 1)")
    check.set_defaults(func=run_check)
    tok = commands.add_parser(
        "tokenizer", help="train a small byte-level BPE tokenizer on SFT files (for task models)",
        description="Train a byte-level BPE tokenizer on the prompts and responses of SFT files, with the bundled "
        "tokenizer's special tokens at ids 0..3 (docs/tasks.md). Give it to training as `tokenizer: DIR`.",
    )
    tok.add_argument("files", nargs="+", help="SFT JSONL files (the training split)")
    tok.add_argument("--vocab-size", type=int, required=True, help="tokens at most, 260 or more (256 bytes + 4 specials)")
    tok.add_argument("--split-digits", action="store_true", help="every digit its own token (for arithmetic)")
    tok.add_argument("--out", required=True, help="tokenizer directory to write")
    tok.set_defaults(func=run_tokenizer)
    images = commands.add_parser(
        "images", help="image-text SFT data for a multimodal DLM: image tokenizer, tokenizer, JSONL",
        description="Train the image tokenizer (a small VQ-VAE) on the train split of an image set, add its codes "
        "to the bundled tokenizer and write train/validation/test JSONL of captioned images in both directions "
        "(docs/multimodal.md). The image set: scikit-learn's bundled digits, or --images DIR (DIR/<class>/*.png).",
    )
    images.add_argument("--out", required=True, help="directory to write (tokenizer/, *.jsonl, a report)")
    images.add_argument("--images", metavar="DIR", help="grayscale PNGs, one sub-folder per class (default: digits)")
    images.add_argument("--codebook", type=integer(2), default=32, help="image codes K (default: %(default)s)")
    images.add_argument("--vq-steps", type=integer(1), default=1500, help="VQ-VAE training steps (default: %(default)s)")
    images.add_argument("--per-image", type=integer(1), default=2,
                        help="text -> image examples per image; image -> text: one more (default: %(default)s)")
    images.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    images.set_defaults(func=run_images)


_TASK_FLAGS = {"gsm": {"--steps": "steps", "--numbers": "numbers", "--sums": "sums"},
               "sudoku": {"--blanks": "blanks", "--no-unique": "unique"},
               "countdown": {"--count": "count", "--numbers": "numbers"}}


def _knobs(args: argparse.Namespace) -> dict:
    """The task settings given on the command line; a flag of another task is an error."""
    from ..errors import InputError

    dests = {flag: dest for flags in _TASK_FLAGS.values() for flag, dest in flags.items()}
    given = {flag: getattr(args, dest) for flag, dest in dests.items() if getattr(args, dest) is not None}
    own = _TASK_FLAGS[args.task]
    stray = [flag for flag in given if flag not in own]
    if stray:
        raise InputError(f"{', '.join(stray)} is not a setting of task {args.task} (its settings: {', '.join(own)})")
    return {own[flag]: value for flag, value in given.items()}


def run_make(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from ..tasks import make_examples, write_jsonl
    from . import check_output_dir

    check_output_dir(str(Path(args.out).parent), "--out")
    if Path(args.out).is_dir():
        from ..errors import InputError

        raise InputError(f"--out {args.out} is a directory; give a file name")
    records = make_examples(args.task, args.n, seed=args.seed, split=args.split, **_knobs(args))
    path = write_jsonl(records, args.out)
    print(f"wrote {len(records)} {args.task} examples ({args.split} split, seed {args.seed}) to {path}", file=sys.stderr)
    return 0


def run_check(args: argparse.Namespace) -> int:
    from ..io import require_file, tokenizer_dir

    require_file(args.file)  # torch-free, before the tokenizer loads
    tokenizer_dir(args.tokenizer)
    from ..training.sft_data import describe_sft_file

    print(describe_sft_file(args.file, tokenizer=args.tokenizer, seq_length=args.seq_length, show=args.show))
    return 0


def run_tokenizer(args: argparse.Namespace) -> int:
    import sys

    from ..io import require_file

    for path in args.files:
        require_file(path)
    from ..tasks.tokenizer import save_task_tokenizer, sft_file_texts, train_task_tokenizer
    from . import check_output_dir

    check_output_dir(args.out, "--out")
    texts = sft_file_texts(args.files)
    tokenizer = train_task_tokenizer(texts, args.vocab_size, split_digits=args.split_digits)
    out = save_task_tokenizer(tokenizer, args.out)
    lengths = [len(ids) for ids in tokenizer(texts[:2000])["input_ids"]]
    print(f"wrote a {len(tokenizer)}-token tokenizer to {out} (trained on {len(texts)} examples; "
          f"{sum(lengths) / len(lengths):.1f} tokens per example with BOS, longest {max(lengths)})", file=sys.stderr)
    return 0


def run_images(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from . import check_output_dir

    check_output_dir(args.out, "--out")
    if args.images is not None and not Path(args.images).is_dir():
        from ..errors import InputError

        raise InputError(f"--images {args.images} is not a directory (one sub-folder of PNGs per class)")
    from ..multimodal.datasets import load_digits_set, load_folder_set
    from ..multimodal.prepare import prepare_image_sft

    image_set = load_folder_set(args.images) if args.images else load_digits_set()
    report = prepare_image_sft(image_set, args.out, codebook_size=args.codebook, vq_steps=args.vq_steps,
                               per_image=args.per_image, seed=args.seed)
    print(json.dumps(report, indent=2))
    return 0
