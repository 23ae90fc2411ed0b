"""Multimodal DLM (dlm-digits) vs its AR control and simple baselines, both directions, held-out digits.

    .venv/bin/python bench/multimodal.py [--dlm dlm-digits] [--ar runs/multimodal-digits-ar/model] [--per-class 20]

Image -> text: caption accuracy on the test split (359 images never seen by the image tokenizer or
the LMs): the class named first in the generated caption must be the image's. Text -> image: for
each digit, --per-class images from "a handwritten <digit>" (temperature 1); an independent
classifier (scikit-learn's SVC on the real training images' pixels) must call each one the digit
asked for; diversity = mean pairwise pixel distance between the images of one class, relative to
the same for the real test images of that class (1 = as varied as the data), and the fraction of
distinct code grids. Writes bench/results/multimodal.json, docs/multimodal_samples.png (samples per
class) and bench/multimodal.png.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from difflm.bundled import resolve_model  # noqa: E402
from difflm.formats import load_diffusion_lm  # noqa: E402
from difflm.multimodal import MultimodalModel, class_of_caption, load_digits_set, split_indices  # noqa: E402
from difflm.multimodal.datasets import DIGIT_WORDS  # noqa: E402
from difflm.multimodal.vqvae import reconstruction_mse  # noqa: E402
from difflm.sampling import SamplerOptions  # noqa: E402

QUESTION = "what digit is this?"


def svc_classifier(train_images: torch.Tensor, train_labels: torch.Tensor):
    """scikit-learn's SVC on the flattened pixels (0-16 scale) of the real training images."""
    from sklearn.svm import SVC

    return SVC(gamma=0.001).fit((train_images * 16).flatten(1).numpy(), train_labels.numpy())


def classify(svc, images: torch.Tensor) -> torch.Tensor:
    return torch.tensor(svc.predict((images * 16).flatten(1).numpy()))


def diversity(images: torch.Tensor, labels: torch.Tensor, reference: torch.Tensor, reference_labels: torch.Tensor) -> float:
    """Mean over classes of (mean pairwise L2 distance among generated) / (the same among real)."""
    ratios = []
    for c in labels.unique().tolist():
        gen, real = images[labels == c].flatten(1), reference[reference_labels == c].flatten(1)
        if len(gen) > 1 and len(real) > 1:
            ratios.append(float(torch.pdist(gen).mean() / torch.pdist(real).mean()))
    return sum(ratios) / len(ratios)


# -- the AR control: left-to-right decoding with the same constraints --------------------------------
@torch.no_grad()
def ar_decode(lm, prompts: torch.Tensor, n: int, allowed: torch.Tensor, *, temperature: float, seed: int,
              eos: int | None = None) -> torch.Tensor:
    """n tokens after prompts [B, P] (equal lengths), drawn from ``allowed`` ids only (LongTensor [k],
    or [n, k]: the ids allowed at each step - an image's cells); greedy at temperature 0. Returns
    LongTensor [B, n] (after EOS: EOS)."""
    generator = torch.Generator().manual_seed(seed)
    ids = prompts
    per_step = allowed if allowed.dim() == 2 else allowed[None].expand(n, -1)
    for i in range(n):
        ban = torch.ones(lm.config.vocab_size, dtype=torch.bool)
        ban[per_step[i]] = False
        logits = lm(input_ids=ids).logits[:, -1].float().masked_fill(ban, float("-inf"))
        if temperature == 0:
            nxt = logits.argmax(-1)
        else:
            nxt = torch.multinomial((logits / temperature).softmax(-1), 1, generator=generator)[:, 0]
        if eos is not None:
            nxt = torch.where((ids[:, prompts.shape[1]:] == eos).any(-1), eos, nxt)
        ids = torch.cat([ids, nxt[:, None]], 1)
    return ids[:, prompts.shape[1]:]


def ar_captions(lm, mm: MultimodalModel, images: torch.Tensor) -> list[str]:
    tok = mm.dlm.tokenizer
    prompts = torch.tensor([mm.image_to_text_template(im, QUESTION, length=0) for im in images])
    every = torch.arange(len(tok))
    text_ids = every[~mm.vocab.is_image_token(every)]
    out = ar_decode(lm, prompts, 12, text_ids, temperature=0, seed=0, eos=tok.eos_token_id)
    return [tok.decode(_cut(row, tok.eos_token_id), skip_special_tokens=True).strip() for row in out.tolist()]


def _cut(row: list[int], eos: int) -> list[int]:
    return row[: row.index(eos)] if eos in row else row


def ar_images(lm, mm: MultimodalModel, caption: str, count: int, seed: int) -> torch.Tensor:
    template = mm.text_to_image_template(caption)
    prompt = torch.tensor([template[: template.index(mm.vocab.boi) + 1]] * count)
    out = ar_decode(lm, prompt, mm.vq.config.num_codes, mm.vocab.codes, temperature=1.0, seed=seed)
    return mm.vq.decode(mm.vocab.to_codes(out))


# -- the run -------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dlm", default="dlm-digits")
    parser.add_argument("--ar", default="runs/multimodal-digits-ar/model", help="the AR control ('' to skip)")
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--strategy", default="low_confidence", help="the DLM's text -> image commit order")
    parser.add_argument("--out", default=str(ROOT / "bench/results/multimodal.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_digits_set()
    train, test = (data.subset(split_indices(len(data.labels), s)) for s in ("train", "test"))
    mm = MultimodalModel.wrap(load_diffusion_lm(args.dlm), resolve_model(args.dlm))
    svc = svc_classifier(train.images, train.labels)
    recon = mm.vq.decode(mm.vq.encode(test.images))
    results: dict = {
        "date": datetime.date.today().isoformat(),
        "command": "python bench/multimodal.py " + " ".join(sys.argv[1:]),
        "test_images": len(test.labels),
        "image_tokenizer": {"test_reconstruction_mse": round(reconstruction_mse(mm.vq, test.images), 5),
                            "svc_accuracy_real_test": float((classify(svc, test.images) == test.labels).float().mean()),
                            "svc_accuracy_reconstructed_test": float((classify(svc, recon) == test.labels).float().mean())},
        "image_to_text": {}, "text_to_image": {},
    }
    ar = None
    if args.ar:
        from transformers import AutoModelForCausalLM

        ar = AutoModelForCausalLM.from_pretrained(args.ar, dtype=torch.float32).eval()

    # image -> text
    def caption_accuracy(captions: list[str]) -> float:
        found = [class_of_caption(c, data.aliases) for c in captions]
        return sum(int(f == y) for f, y in zip(found, test.labels.tolist())) / len(found)

    start = time.perf_counter()
    dlm_captions = []
    for i in range(0, len(test.labels), 64):
        dlm_captions += mm.image_to_text(test.images[i : i + 64], QUESTION, length=12, options=SamplerOptions())
    i2t = results["image_to_text"]
    i2t["dlm"] = {"accuracy": caption_accuracy(dlm_captions), "seconds": round(time.perf_counter() - start, 1),
                  "examples": dlm_captions[:5], "decoding": "greedy, low_confidence, 12 steps"}
    if ar is not None:
        start = time.perf_counter()
        i2t["ar"] = {"accuracy": caption_accuracy(ar_captions(ar, mm, test.images)),
                     "seconds": round(time.perf_counter() - start, 1), "decoding": "greedy, left to right"}
    i2t["chance"] = {"accuracy": float(torch.bincount(train.labels).max() / len(train.labels))}
    i2t["svc_on_pixels"] = {"accuracy": results["image_tokenizer"]["svc_accuracy_real_test"]}

    # text -> image
    labels = torch.arange(10).repeat_interleave(args.per_class)
    options = SamplerOptions(temperature=1.0, strategy=args.strategy)
    generated: dict[str, torch.Tensor] = {}
    start = time.perf_counter()
    images = []
    for digit, word in enumerate(DIGIT_WORDS):
        generator = torch.Generator().manual_seed(digit)
        images.append(mm.text_to_image([f"a handwritten {word}"] * args.per_class, options=options,
                                       generator=generator)[0])
    generated["dlm"] = torch.cat(images)
    dlm_seconds = time.perf_counter() - start
    if ar is not None:
        generated["ar"] = torch.cat([ar_images(ar, mm, f"a handwritten {w}", args.per_class, seed=d)
                                     for d, w in enumerate(DIGIT_WORDS)])
    means = torch.stack([train.images[train.labels == c].mean(0) for c in range(10)])
    generated["class_mean_image"] = means[labels]
    pick = torch.Generator().manual_seed(0)
    generated["random_training_image"] = torch.stack([
        train.images[train.labels == c][torch.randint(int((train.labels == c).sum()), (1,), generator=pick)][0]
        for c in labels.tolist()])
    for name, pictures in generated.items():
        results["text_to_image"][name] = {
            "svc_accuracy": float((classify(svc, pictures) == labels).float().mean()),
            "diversity_vs_real": round(diversity(pictures, labels, test.images, test.labels), 3),
            "distinct_fraction": len({tuple((p * 255).round().int().flatten().tolist()) for p in pictures}) / len(pictures),
        }
    results["text_to_image"]["dlm"]["seconds"] = round(dlm_seconds, 1)
    results["text_to_image"]["dlm"]["decoding"] = f"temperature 1, {args.strategy}, 16 steps"
    results["text_to_image"]["per_class"] = args.per_class
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    plot(generated, labels, results, test)
    print(json.dumps(results, indent=2))
    return 0


def plot(generated: dict[str, torch.Tensor], labels: torch.Tensor, results: dict, test) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 10
    fig, axes = plt.subplots(10, columns + 1, figsize=(columns + 1, 10.4))
    for digit in range(10):
        real = test.images[test.labels == digit][0]
        axes[digit, 0].imshow(real, cmap="gray", vmin=0, vmax=1)
        for j, image in enumerate(generated["dlm"][labels == digit][:columns]):
            axes[digit, j + 1].imshow(image, cmap="gray", vmin=0, vmax=1)
        axes[digit, 0].set_ylabel(DIGIT_WORDS[digit], rotation=0, labelpad=22)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    axes[0, 0].set_title("real", fontsize=9)
    fig.suptitle('dlm-digits, text -> image: "a handwritten <digit>" (temperature 1); left: a real test image')
    fig.tight_layout()
    fig.savefig(ROOT / "docs/multimodal_samples.png", dpi=60)
    plt.close(fig)

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    i2t = {k: v["accuracy"] for k, v in results["image_to_text"].items()}
    left.bar(list(i2t), list(i2t.values()), color="tab:blue")
    left.set_title("image -> text: caption accuracy (test split)")
    left.set_ylim(0, 1)
    t2i = {k: v for k, v in results["text_to_image"].items() if isinstance(v, dict)}
    x = range(len(t2i))
    right.bar([i - 0.2 for i in x], [v["svc_accuracy"] for v in t2i.values()], 0.4, label="SVC says the asked digit")
    right.bar([i + 0.2 for i in x], [v["diversity_vs_real"] for v in t2i.values()], 0.4, label="diversity vs real")
    right.set_xticks(list(x), [k.replace("_", "\n") for k in t2i], fontsize=8)
    right.set_title("text -> image")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(ROOT / "bench/multimodal.png", dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
