"""Multimodal DLMs (difflm.multimodal): the image tokenizer, image codes as tokens, both directions
through the one sampler, and the sampler hook that keeps each span in its modality. Tiny random
models; the bundled dlm-digits is exercised in tests/test_multimodal_cli.py."""

from __future__ import annotations

import pytest
import torch

from difflm import DiffusionLM
from difflm.errors import InputError, ModelLoadError
from difflm.multimodal import (
    ImageTokenizerConfig, ImageVocab, MultimodalModel, VQVAE, add_image_tokens, class_of_caption, image_text,
    load_digits_set, load_image_tokenizer, split_indices, train_vqvae,
)
from difflm.multimodal.datasets import DIGIT_WORDS, sft_records
from difflm.multimodal.vqvae import reconstruction_mse
from difflm.sampling import SamplerOptions, denoise, fill, template_canvas
from conftest import tiny_backbone
from test_sampling import single_thread  # noqa: F401 (autouse fixture)

K = 8
CELLS = 16


@pytest.fixture(scope="module")
def digits():
    return load_digits_set()


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from difflm.bundled import TOKENIZER_DIR

    return add_image_tokens(AutoTokenizer.from_pretrained(TOKENIZER_DIR), K, CELLS)


@pytest.fixture(scope="module")
def tiny(tokenizer):
    """A random 2-layer DLM over the bundled vocabulary + image tokens, with a random image tokenizer."""
    backbone = tiny_backbone("llama", vocab=len(tokenizer))
    dlm = DiffusionLM.from_causal_lm(backbone, mask_token=tokenizer.mask_token_id, tokenizer=tokenizer, shift=False,
                                     attention="bidirectional").eval()
    torch.manual_seed(0)
    return MultimodalModel(dlm, VQVAE(ImageTokenizerConfig(codebook_size=K)).eval(), ImageVocab.of(tokenizer))


# -- the image tokenizer ---------------------------------------------------------------------------
def test_vqvae_learns_and_round_trips(digits, tmp_path):
    train = digits.subset(split_indices(len(digits.labels), "train"))
    test = digits.subset(split_indices(len(digits.labels), "test"))
    vq = train_vqvae(train.images[:400], ImageTokenizerConfig(codebook_size=16), steps=250, progress=False)
    codes = vq.encode(test.images)
    assert codes.shape == (len(test.labels), 16) and 0 <= int(codes.min()) and int(codes.max()) < 16
    mean_image_mse = float(((test.images - train.images.mean(0)) ** 2).mean())
    assert reconstruction_mse(vq, test.images) < mean_image_mse / 3  # far better than knowing nothing
    vq.save(tmp_path)
    again = load_image_tokenizer(tmp_path)
    assert torch.equal(again.encode(test.images), codes)
    assert torch.equal(again.decode(codes), vq.decode(codes))


def test_load_image_tokenizer_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="text-only"):
        load_image_tokenizer(tmp_path)
    (tmp_path / "image_tokenizer.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="does not load"):
        load_image_tokenizer(tmp_path)


# -- image codes as tokens -------------------------------------------------------------------------
def test_image_span_tokenizes_to_its_ids(tokenizer):
    vocab = ImageVocab.of(tokenizer)
    assert (vocab.cells, vocab.codebook_size) == (CELLS, K) and vocab.boi == 8192 and vocab.eoi == 8193
    codes = [3, 0, 7, 7, 1]
    ids = tokenizer(image_text(codes), add_special_tokens=False)["input_ids"]
    assert ids == vocab.span(codes) and len(set(ids[3:5])) == 2  # code 7 in cells 2 and 3: two tokens
    assert tokenizer.convert_ids_to_tokens(ids[:3]) == ["<boi>", "<img_0_3>", "<img_1_0>"]
    assert vocab.to_codes(torch.tensor(ids[1:-1])).tolist() == codes
    with pytest.raises(InputError, match="not an image code"):
        vocab.to_codes(torch.tensor([vocab.boi]))
    assert tokenizer.decode(ids + tokenizer(" a seven", add_special_tokens=False)["input_ids"],
                            skip_special_tokens=True).strip() == "a seven"
    with pytest.raises(InputError, match="already has image tokens"):
        add_image_tokens(tokenizer, K, CELLS)


def test_text_only_tokenizer_has_no_image_vocab():
    from transformers import AutoTokenizer

    from difflm.bundled import TOKENIZER_DIR

    with pytest.raises(ModelLoadError, match="text-only"):
        ImageVocab.of(AutoTokenizer.from_pretrained(TOKENIZER_DIR))


# -- data ------------------------------------------------------------------------------------------
def test_splits_are_disjoint_and_seeded(digits):
    parts = {s: split_indices(len(digits.labels), s) for s in ("train", "validation", "test")}
    assert sum(len(p) for p in parts.values()) == len(digits.labels) == 1797
    assert len(torch.cat(list(parts.values())).unique()) == 1797
    assert torch.equal(parts["test"], split_indices(1797, "test"))


def test_records_cover_both_directions(digits):
    part = digits.subset(torch.arange(5))  # classes 0..4; image i is coded as all-i codes
    records = sft_records(torch.arange(5)[:, None].expand(5, 16), part, per_image=2, seed=0)
    t2i = [r for r in records if r["response"].startswith("<boi>")]
    i2t = [r for r in records if r["prompt"].startswith("<boi>")]
    assert (len(t2i), len(i2t), len(records)) == (10, 15, 25)
    for r in i2t:  # the answer names the image's class, first
        image = int(r["prompt"].split("<img_0_")[1].split(">")[0])
        assert r["prompt"].count("<img_") == 16
        assert class_of_caption(r["response"].split()[0], digits.aliases) == int(part.labels[image])
    for r in t2i:  # the caption names the image's class
        image = int(r["response"].split("<img_0_")[1].split(">")[0])
        assert class_of_caption(r["prompt"], digits.aliases) == int(part.labels[image])


@pytest.mark.parametrize("text, expected", [
    ("a handwritten seven", 7), ("the digit 7", 7), ("handwritten digit 1", 1), ("nothing here", None),
    ("a seven, not a one", 7), ("someone", None),
])
def test_class_of_caption(text, expected):
    assert class_of_caption(text, [[w, str(n)] for n, w in enumerate(DIGIT_WORDS)]) == expected


# -- both directions through the sampler -----------------------------------------------------------
def test_text_to_image_writes_each_cell_its_own_codes(tiny):
    templates = [tiny.text_to_image_template(c) for c in ("a handwritten seven", "draw the digit 1")]
    for strategy in ("low_confidence", "random"):
        images, codes = tiny.text_to_image(["a handwritten seven", "draw the digit 1"],
                                           options=SamplerOptions(temperature=1.0, strategy=strategy),
                                           generator=torch.Generator().manual_seed(0))
        assert images.shape == (2, 8, 8) and codes.shape == (2, 16)
        assert 0 <= float(images.min()) and float(images.max()) <= 1
        assert int(codes.min()) >= 0 and int(codes.max()) < K
    out = fill(tiny.dlm, templates, return_dict=True, logits_processor=tiny.only_image_codes(templates),
               temperature=1.0, generator=torch.Generator().manual_seed(0))
    for row in out.new_tokens:  # cell j holds a token of cell j (the captions differ in length: left padding)
        assert all(token in tiny.vocab.codes[j].tolist() for j, token in enumerate(row))
    # the random model, unconstrained, would write text tokens there: the hook is what keeps it valid
    free = fill(tiny.dlm, templates, return_dict=True)
    assert not all(t in tiny.vocab.codes.flatten().tolist() for row in free.new_tokens for t in row)


def test_the_sampler_never_changes_the_prompt(tiny, digits):
    image = digits.images[0]
    template = tiny.image_to_text_template(image, "what digit is this?", length=6)
    out = fill(tiny.dlm, [template], return_dict=True, logits_processor=tiny.only_text(),
               temperature=1.0, generator=torch.Generator().manual_seed(1))
    prompt = torch.tensor(template[:-6])
    assert torch.equal(out.sequences[0, : len(prompt)], prompt)  # the image codes and the question
    assert not bool(tiny.vocab.is_image_token(torch.tensor(out.new_tokens[0])).any())
    captions = tiny.image_to_text(digits.images[:3], "", length=5)
    # a batch of images is captioned row by row as each image alone (left padding changes nothing), and
    # what is written is text: no image code among the caption's tokens
    assert captions == [tiny.image_to_text(image[None], "", length=5)[0] for image in digits.images[:3]]
    for caption in captions:
        ids = torch.tensor(tiny.dlm.tokenizer(caption, add_special_tokens=False)["input_ids"], dtype=torch.long)
        assert not bool(tiny.vocab.is_image_token(ids).any())


def test_logits_processor_sees_the_positions_being_decided(tiny):
    canvas, attn, gen = template_canvas(tiny.dlm, [tiny.text_to_image_template("a two")])
    seen = []

    def spy(logits, positions):
        seen.append((logits.shape[0], positions.clone()))
        return logits

    denoise(tiny.dlm, canvas, gen, attn, logits_processor=spy, steps=4)
    assert len(seen) == 4 and seen[0][0] == 16 and torch.equal(seen[0][1], gen)
    assert all(n == int(p.sum()) for n, p in seen) and [n for n, _ in seen] == [16, 12, 8, 4]


def test_wrap_rejects_a_text_only_model(tiny, tmp_path):
    with pytest.raises(InputError, match="text-only"):
        MultimodalModel.wrap(tiny.dlm, tmp_path)
