"""The bundled models stay within the package's size budget: all their weights together at most
96 MiB (the repository ships them; bf16 storage keeps each 6.8 M-parameter model at ~14 MB). The budget
was 80 MiB until dlm-uniform (#30) joined the text models; the issue allowed 96."""

from difflm.bundled import MODELS, MODELS_DIR

BUDGET = 96 * 2**20


def test_all_bundled_weights_fit_the_budget():
    weights = [f for f in MODELS_DIR.rglob("*.safetensors")]
    assert weights, "no bundled weights found"
    total = sum(f.stat().st_size for f in weights)
    assert total <= BUDGET, f"bundled weights take {total / 2**20:.1f} MiB > 96 MiB"


def test_every_bundled_name_points_at_a_model_directory():
    for name, path in MODELS.items():
        assert (path / "config.json").is_file(), name
        assert path.parent == MODELS_DIR, name
