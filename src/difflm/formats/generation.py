"""A model's recommended decoding settings: the ``difflm`` section of its generation_config.json.

transformers writes generation_config.json beside the weights (its own `GenerationConfig`: special ids,
``max_new_tokens``, ...); difflm keeps what the masked sampler should do by default in a section of its
own, so that the two never collide and transformers still reads the file::

    {"difflm": {"max_new_tokens": 118, "strategy": "threshold", "threshold": 0.99, "cache": "block",
                "stop_at_eos": true}}

``max_new_tokens`` is the recommended number of new tokens; every other key is a field of
`difflm.sampling.SamplerOptions`, which validates the values (the sampler sits above this package: here
only the file's shape is checked). A file without the section (a published model's, or transformers'
own) gives no defaults. `DiffusionLM.save_pretrained` writes the section, the DLM loaders read it into
``model.generation_defaults``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError

GENERATION_CONFIG = "generation_config.json"
SECTION = "difflm"
LENGTH_KEY = "max_new_tokens"


@dataclass(frozen=True)
class GenerationDefaults:
    """How a model decodes unless told otherwise.

    options: `SamplerOptions` fields by name (validated by `difflm.sampling.options.model_options`).
    max_new_tokens: the recommended number of new tokens (None: no recommendation).
    source: the file it was read from (for messages), None when built in code.
    from_layout: read off a layout's own transformers fields (DiffusionGemma's generation config), which a save
        keeps as they are: `write_generation_defaults` then writes no ``difflm`` section (transformers' strict
        generation config classes refuse one), and a reload reads the same fields again.
    """

    options: dict[str, Any] = field(default_factory=dict)
    max_new_tokens: int | None = None
    source: str | None = None
    from_layout: bool = False

    def __post_init__(self) -> None:
        where = self.source or "generation defaults"
        if not isinstance(self.options, dict) or not all(isinstance(k, str) for k in self.options):
            raise ModelLoadError(f"{where}: the decoding options must be an object of SamplerOptions fields")
        length = self.max_new_tokens
        if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 1):
            raise ModelLoadError(f"{where}: {LENGTH_KEY} must be an integer >= 1, got {length!r}")
        bad = next((k for k, v in self.options.items() if not (v is None or isinstance(v, (str, int, float, bool)))), None)
        if bad is not None:
            raise ModelLoadError(f"{where}: option {bad!r} must be a string, number, boolean or null, "
                                 f"got {self.options[bad]!r}")

    def to_json(self) -> dict[str, Any]:
        """The ``difflm`` section of generation_config.json."""
        length = {} if self.max_new_tokens is None else {LENGTH_KEY: self.max_new_tokens}
        return {**length, **self.options}

    def describe(self) -> str:
        """One short line: "max_new_tokens=118, strategy=threshold, threshold=0.99, ..."."""
        return ", ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in self.to_json().items())


def parse_generation_defaults(section: Any, source: str | None = None) -> GenerationDefaults:
    """A ``difflm`` section (a dict) as `GenerationDefaults`; `ModelLoadError` when it is not one."""
    where = source or "generation defaults"
    if not isinstance(section, dict):
        raise ModelLoadError(f"{where}: \"{SECTION}\" must be an object of SamplerOptions fields "
                             f"(and {LENGTH_KEY}), got {type(section).__name__}")
    options = {k: v for k, v in section.items() if k != LENGTH_KEY}
    return GenerationDefaults(options, section.get(LENGTH_KEY), source)


def read_generation_defaults(directory: str | os.PathLike) -> GenerationDefaults | None:
    """The ``difflm`` section of ``directory``/generation_config.json, or None (no file, or a file
    without the section). `ModelLoadError` in one line for a file that is not a JSON object or a
    section of the wrong shape."""
    data = read_generation_config(directory)
    if data is None or SECTION not in data:
        return None
    return parse_generation_defaults(data[SECTION], str(Path(directory) / GENERATION_CONFIG))


def read_generation_config(directory: str | os.PathLike) -> dict[str, Any] | None:
    """``directory``/generation_config.json as a dict, or None without the file; `ModelLoadError` in one
    line for a file that is not a JSON object."""
    path = Path(directory) / GENERATION_CONFIG
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path} is not valid JSON ({exc}); fix or delete it") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} must hold a JSON object, got {type(data).__name__}; fix or delete it")
    return data


def write_generation_defaults(directory: str | os.PathLike, defaults: GenerationDefaults) -> Path:
    """Write ``defaults`` as the ``difflm`` section of ``directory``/generation_config.json, keeping
    what else the file holds (transformers' own fields); defaults read off the layout's own fields
    (``from_layout``) are those fields, and are not written again."""
    path = Path(directory) / GENERATION_CONFIG
    if defaults.from_layout:
        return path
    data: dict[str, Any] = {}
    if path.is_file():
        try:
            loaded = json.loads(path.read_text("utf-8"))
            data = loaded if isinstance(loaded, dict) else {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            data = {}
    data[SECTION] = defaults.to_json()
    path.write_text(json.dumps(data, indent=2) + "\n", "utf-8")
    return path
