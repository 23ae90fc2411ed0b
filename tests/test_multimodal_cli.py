"""`difflm generate --image-out / --image` and `difflm data images` end to end, with the bundled
multimodal model dlm-digits; bad input is one line and exit status 2."""

from __future__ import annotations

import json

import pytest
import torch

from difflm.bundled import MODELS
from difflm.cli import main
from test_cli_errors import _fails_with_one_line
from test_sampling import single_thread  # noqa: F401 (autouse fixture)

pytestmark = pytest.mark.skipif(not MODELS["dlm-digits"].is_dir(), reason="dlm-digits is not built")


@pytest.fixture(scope="module")
def digits_test():
    from difflm.multimodal import load_digits_set, split_indices

    data = load_digits_set()
    return data.subset(split_indices(len(data.labels), "test"))


@pytest.fixture(scope="module")
def dlm_digits():
    from difflm.bundled import resolve_model
    from difflm.cli.generate import load_dlm
    from difflm.multimodal import MultimodalModel

    return MultimodalModel.wrap(load_dlm("dlm-digits"), resolve_model("dlm-digits"))


def test_text_to_image_writes_a_png(tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "seven.png"
    assert main(["generate", "--model", "dlm-digits", "a handwritten seven", "--image-out", str(out), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["image"] == str(out) and len(record["codes"]) == 16
    with Image.open(out) as image:
        assert image.format == "PNG" and image.mode == "L" and image.size == (8, 8)


def test_text_to_image_shows_the_grid(tmp_path, capsys):
    assert main(["generate", "--model", "dlm-digits", "a one", "a zero", "--image-out", str(tmp_path / "d.png"),
                 "--show-steps", "--steps", "4"]) == 0
    out = capsys.readouterr().out
    assert "step 4/4" in out and "16/16 image codes" in out and "··" in out  # dots: codes not yet committed
    assert (tmp_path / "d-1.png").is_file() and (tmp_path / "d-2.png").is_file()


def test_image_to_text_reads_a_png(tmp_path, capsys, digits_test, dlm_digits):
    from difflm.multimodal import class_of_caption
    from difflm.multimodal.imageio import read_png, write_png

    sevens = digits_test.images[digits_test.labels == 7]
    path = write_png(sevens[0], tmp_path / "seven.png")
    assert main(["generate", "--model", "dlm-digits", "--image", str(path), "what digit is this?", "--length", "8"]) == 0
    caption = capsys.readouterr().out.strip()
    # the command prints what the library writes for the image read back from the PNG (greedy: no seed
    # involved), and the answer names a digit - text, not image codes or an empty string
    assert [caption] == dlm_digits.image_to_text(read_png(path, 8)[None], "what digit is this?", length=8)
    assert class_of_caption(caption, digits_test.aliases) is not None


def test_bundled_captions_beat_chance(dlm_digits, digits_test):
    from difflm.multimodal import class_of_caption

    images, labels = digits_test.images[:40], digits_test.labels[:40]
    captions = dlm_digits.image_to_text(images, "what digit is this?", length=8)
    correct = sum(int(class_of_caption(c, digits_test.aliases) == y) for c, y in zip(captions, labels.tolist()))
    assert correct / 40 >= 0.45, captions  # chance is 0.1; dlm-digits gets 27 of these 40


def test_bundled_images_beat_chance(dlm_digits):
    from sklearn.svm import SVC

    from difflm.multimodal import load_digits_set, split_indices
    from difflm.multimodal.datasets import DIGIT_WORDS
    from difflm.sampling import SamplerOptions

    data = load_digits_set()
    train = data.subset(split_indices(len(data.labels), "train"))
    judge = SVC(gamma=0.001).fit((train.images * 16).flatten(1).numpy(), train.labels.numpy())  # the bench's judge
    images, codes = dlm_digits.text_to_image([f"a handwritten {w}" for w in DIGIT_WORDS for _ in range(5)],
                                             options=SamplerOptions(temperature=1.0),
                                             generator=torch.Generator().manual_seed(0))
    assert codes.shape == (50, 16) and images.shape == (50, 8, 8)
    asked = torch.arange(10).repeat_interleave(5)
    assert float((torch.tensor(judge.predict((images * 16).flatten(1).numpy())) == asked).float().mean()) >= 0.2  # chance: 0.1


# -- bad input: one line, exit status 2 ------------------------------------------------------------
@pytest.fixture
def pngs(tmp_path):
    from PIL import Image

    Image.new("L", (16, 16)).save(tmp_path / "big.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "rgb.png")
    (tmp_path / "text.png").write_text("not an image")
    Image.new("L", (8, 8)).save(tmp_path / "ok.png")
    return tmp_path


@pytest.mark.parametrize("argv, match", [
    (["--image", "{d}/big.png", "?"], r"is 16x16 pixels; expected 8x8"),
    (["--image", "{d}/rgb.png", "?"], r"has mode RGB; the model reads grayscale \(mode L\)"),
    (["--image", "{d}/text.png", "?"], r"is not a readable image file"),
    (["--image", "{d}/missing.png", "?"], r"not found"),
    (["--image", "{d}/ok.png", "--image-out", "{d}/o.png", "?"], r"not both"),
    (["--image-out", "{d}/o.jpg", "a seven"], r"give a \.png file name"),
    (["--image-out", "{d}/o.png", "--model", "dlm-adapted", "a seven"], r"model dlm-adapted is text-only"),
    (["--image", "{d}/ok.png", "--model", "dlm-adapted", "?"], r"text-only .* cannot read images"),
])
def test_bad_image_input(capsys, pngs, argv, match):
    args = [a.format(d=pngs) for a in argv]
    if "--model" not in args:
        args += ["--model", "dlm-digits"]
    _fails_with_one_line(capsys, ["generate", *args], match)


def test_data_images_from_a_folder(tmp_path, capsys):
    from PIL import Image

    for name, value in (("dark_square", 40), ("bright_square", 220)):
        (tmp_path / "set" / name).mkdir(parents=True)
        for i in range(6):
            Image.new("L", (4, 4), value + i).save(tmp_path / "set" / name / f"{i}.png")
    out = tmp_path / "out"
    assert main(["data", "images", "--images", str(tmp_path / "set"), "--out", str(out), "--codebook", "4",
                 "--vq-steps", "20"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["codes_per_image"] == 4 and report["train"]["images"] == 9
    assert (out / "tokenizer" / "image_tokenizer.json").is_file()
    record = json.loads((out / "train.jsonl").read_text().splitlines()[0])
    assert {"prompt", "response"} == set(record) and "square" in record["prompt"] + record["response"]
    Image.new("L", (6, 6)).save(tmp_path / "set" / "dark_square" / "odd.png")
    _fails_with_one_line(capsys, ["data", "images", "--images", str(tmp_path / "set"), "--out", str(out)],
                         r"is 6x6 pixels; expected 4x4")
