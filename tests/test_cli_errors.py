"""Every bad value on the `difflm` command line ends the same way: one line on stderr that starts
with "difflm: error:", exit status 2, no traceback - argparse's own rejections included."""

from __future__ import annotations

import re

import pytest
import torch

from difflm.cli import main
from test_sampling import single_thread  # noqa: F401 (autouse fixture)


def _fails_with_one_line(capsys, argv: list[str], match: str) -> str:
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert err.count("\n") == 1 and err.startswith("difflm: error:") and "Traceback" not in err, err
    assert re.search(match, err), err
    return err


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "a-file"
    path.write_text("not a directory\n")
    return path


@pytest.mark.parametrize("argv, match", [
    (["generate", "hi", "--device", "quantum"], r"--device: 'quantum' is not a torch device"),
    (["infill", "Let there be [MASK:2].", "--device", "quantum"], r"not a torch device"),
    (["generate", "hi", "--device", "cuda:99"], r"--device cuda:99: not available on this machine"),
    (["generate", "hi", "--device", "meta"], r"--device meta holds no data"),
    (["generate", "hi", "--post-edit-steps", "3"], r"post_edit_steps edits a filled block: it needs editing_threshold"),
    # a family's flag on a model of another family is refused, never ignored
    (["generate", "hi", "--eta", "0.5"], r"--eta: flag\(s\) of continuous DLMs, and dlm-adapted is not one"),
    (["infill", "a [MASK:2] b", "--clamp"], r"--clamp: flag\(s\) of continuous DLMs"),
    (["generate", "hi", "--show-steps", "--delay", "-1"], r"--delay must be"),
    (["generate", "hi", "--seed", "-1"], r"--seed must be"),
    (["generate", "hi", "--seed", str(2**64)], r"--seed must be"),
    # argparse's rejections: one line too, naming the help to read
    (["generate", "hi", "--cache", "bogus"], r"argument --cache: invalid choice: 'bogus'.*`difflm generate --help`"),
    (["generate", "hi", "--length", "many"], r"argument --length: invalid int value: 'many'"),
    (["generate", "hi", "--no-such-flag"], r"unrecognized arguments: --no-such-flag"),
    (["generate"], r"the following arguments are required: prompt"),
    (["infill", "[MASK:2]", "--schedule", "fast"], r"argument --schedule: invalid choice"),
    (["inspect", ".", "--format", "bogus"], r"argument --format: invalid choice: 'bogus'"),
    (["frobnicate"], r"invalid choice: 'frobnicate'.*`difflm --help`"),
])
def test_bad_values_before_anything_loads(capsys, argv, match):
    _fails_with_one_line(capsys, argv, match)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_device_this_machine_lacks(capsys):
    _fails_with_one_line(capsys, ["generate", "hi", "--device", "cuda", "--length", "4"],
                         r"--device cuda: not available on this machine \(.+\)$")


def test_device_is_checked_before_the_model_loads(capsys, monkeypatch):
    import difflm.cli.generate

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the device was checked")

    monkeypatch.setattr(difflm.cli.generate, "load_dlm", must_not_load)
    _fails_with_one_line(capsys, ["generate", "hi", "--device", "quantum"], "not a torch device")


def test_inspect_refuses_a_mask_id_outside_the_vocabulary(capsys):
    _fails_with_one_line(capsys, ["inspect", _bundled("ar-base"), "--mask-token-id", "999999"], r"outside the vocabulary")


def test_convert_refuses_an_out_it_cannot_write(capsys, a_file):
    _fails_with_one_line(capsys, ["convert", _bundled("dlm-adapted"), str(a_file / "out")],
                         r"OUT .*a-file/out cannot be created: .*a-file is a file")
    _fails_with_one_line(capsys, ["convert", _bundled("dlm-adapted"), str(a_file)], r"OUT .*a-file is a file")


def test_demo_refuses_bad_values_one_at_a_time(capsys, a_file):
    _fails_with_one_line(capsys, ["demo", "--eval-blocks", "0"], r"^difflm: error: --eval-blocks must be >= 1, got 0$")
    _fails_with_one_line(capsys, ["demo", "--adapt-steps", "-2"], r"--adapt-steps must be >= 0")
    _fails_with_one_line(capsys, ["demo", "--seed", "-1"], r"--seed must be")
    _fails_with_one_line(capsys, ["demo", "--adapt-steps", "2", "--output-dir", str(a_file / "run")],
                         r"--output-dir .* cannot be created")


def test_train_refuses_an_output_dir_it_cannot_write(capsys, a_file):
    from test_training import TINY  # a 2-layer model: nothing big is built should the check come late

    _fails_with_one_line(capsys, ["train", *TINY, "objective=ar", "max_steps=1", "--output-dir", str(a_file / "run")],
                         r"--output-dir .*a-file/run cannot be created")


def _bundled(name: str) -> str:
    from difflm.bundled import MODELS

    path = MODELS[name]
    if not (path / "model.safetensors").is_file():
        pytest.skip("bundled models not built")
    return str(path)
