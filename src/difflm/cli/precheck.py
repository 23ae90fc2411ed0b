"""The sampler flags' checks that need a model's configs but not its weights, run before torch loads.

`difflm generate`, `difflm infill` and `difflm eval` validate their sampler flags as one `SamplerOptions`
over the model's saved decoding defaults, and the sampler refuses renoising options that the model does not
decode with. Both used to wait for torch and transformers (seconds) because the defaults and the model's
process are read by the loaders. Here they are read from the files alone, where the files tell:

* the saved defaults: the ``difflm`` section of the directory's own generation_config.json (what
  `difflm.formats.saved_generation_defaults` reads first); a directory of difflm's own layout
  (difflm_config.json, detected first) without one has none, and offers no ``--preset``;
* whether the model is a uniform-state DLM, or one that always renoises (an encoder-decoder): the
  ``extra`` of difflm_config.json, which difflm's own layout loads as it is.

Where the files do not tell (an adapter's base, a published layout's own decoding, any other layout's
process, a file that does not parse), nothing is decided here: the run checks after the imports, as
before. Every check here is the one the run makes again later, with the same words, so what a command
answers does not depend on which of the two caught it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..bundled import resolve_model
from ..config import CONFIG_NAME, DiffusionConfig
from ..errors import DiffLMError, InputError
from ..registry import FORMATS, MODEL_KINDS
from ..sampling.options import SamplerOptions, check_renoising_applies, over_model

__all__ = ["check_sampler_flags", "no_preset_error"]

GENERATION_CONFIG = "generation_config.json"  # beside the weights (difflm.formats.generation)
SECTION, LENGTH_KEY = "difflm", "max_new_tokens"  # its difflm section; the one key that is not a sampler option
NATIVE_FORMAT = "difflm"  # registry.FORMATS' layout of difflm_config.json directories (no published decoding)


class Unknown(Exception):
    """The model's files do not tell this without its loader (torch): leave the check to the run."""


def no_preset_error(name_or_path: str, preset: str, offered: list[str]) -> InputError:
    """The one-line refusal of ``--preset PRESET`` that the model does not offer (``offered``: its presets)."""
    what = f"its presets: {', '.join(offered)}" if offered else "it offers none"
    return InputError(f"--preset {preset!r}: {name_or_path} has no such decoding preset ({what})")


def check_sampler_flags(name_or_path: str, given: dict[str, Any], *, preset: str | None = None,
                        fallback: SamplerOptions | None = None, model_defaults: bool = True,
                        renoising: bool = True) -> None:
    """Refuse now (`InputError`, one line) the sampler flags ``given`` (`SamplerOptions` fields) that the run
    would refuse after loading torch, as far as the model's files tell without it (module doc).

    ``model_defaults``: the run applies the flags over the model's saved defaults (False: over ``fallback``
    alone, as a family of its own does); ``fallback``: the base when there are none (a task model's strategy);
    ``renoising``: the run decodes with `difflm.sampling`'s samplers, which refuse renoising options that the
    model does not decode with. Nothing is raised for what only the run can decide."""
    if not model_defaults:
        over_model(fallback, **given)
        return
    path = resolve_model(name_or_path)
    try:
        native = _is_native(path)
        if preset is not None:
            if not native:
                raise Unknown
            raise no_preset_error(name_or_path, preset, [])  # difflm's own layout publishes no presets
        saved = _saved_options(path, native)
        options = over_model(saved if saved is not None else fallback, **given)
        if not renoising:
            return
        extra = _native_extra(path) if native else None
        if extra is None or extra.get("denoiser"):  # an encoder-decoder renoises whatever the options
            raise Unknown
        check_renoising_applies(options, uniform_state=extra.get("process") == "uniform")
    except Unknown:
        return


def _is_native(path: Path) -> bool:
    """Whether ``path`` is a checkpoint of difflm's own layout: difflm_config.json beside the weights, no
    marker of another model kind (an adapter, a family's model), and that layout is detected first."""
    if not path.is_dir() or not (path / CONFIG_NAME).is_file() or next(iter(FORMATS), None) != NATIVE_FORMAT:
        return False
    markers = (MODEL_KINDS.entry(kind).meta.get("marker") for kind in MODEL_KINDS)
    return not any(marker and (path / marker).exists() for marker in markers)


def _saved_options(path: Path, native: bool) -> SamplerOptions | None:
    """The model's saved decoding defaults (None: it saved none); `Unknown` where only the loader can tell."""
    try:
        data = json.loads((path / GENERATION_CONFIG).read_text("utf-8"))
    except FileNotFoundError:
        data = {}
    except (OSError, ValueError):  # unreadable or not JSON: the run says so, naming the file
        raise Unknown from None
    if not isinstance(data, dict) or not isinstance(data.get(SECTION, {}), dict):
        raise Unknown
    if SECTION not in data:
        if native:
            return None
        raise Unknown  # an adapter's base or a published layout decides
    options = {k: v for k, v in data[SECTION].items() if k != LENGTH_KEY}
    try:
        return SamplerOptions.merge(None, **options)
    except DiffLMError:  # a bad saved value is the model's error, reported by the run with the file's name
        raise Unknown from None


def _native_extra(path: Path) -> dict[str, Any] | None:
    """``extra`` of difflm_config.json (what the model's config carries once loaded), None if unreadable."""
    try:
        return dict(DiffusionConfig.load(path).extra or {})
    except (DiffLMError, TypeError, ValueError):
        return None
