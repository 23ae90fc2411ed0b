"""Scoring groups of completions with weighted rewards, and group-relative advantages (GRPO).

A reward is a plain callable ``reward(prompt, completion, **example_fields) -> float``: a name of
`difflm.registry.REWARDS` or a user function named ``"module:function"`` (the module importable from
``sys.path``). `RewardSet` holds one or several weighted rewards and scores the G completions of one
prompt; every way a reward can go wrong becomes one `InputError` line naming the reward and the prompt,
so a long RL run stops on its first bad value instead of training on it.

Values: a reward returns a finite real number (int, float, numpy scalar). A ``bool`` counts as 1.0 /
0.0 - checkers answer True/False and that is what they mean; NaN, inf, None, strings, tensors and
anything else are refused.

Torch-free: `group_advantages` takes nested lists or a torch tensor and uses only its methods.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from ..errors import ConfigError, DiffLMError, InputError
from ..registry import REWARDS, Entry

Reward = Callable[..., float]
ADVANTAGE_SCALES = ("group", "batch", "none")  # what group_advantages divides by (its `scale`)


def shorten(text: str, limit: int = 40, *, quote: bool = True) -> str:
    """``text`` on one line, cut to ``limit`` characters (quoted): how an error names a prompt."""
    flat = " ".join(str(text).split())
    flat = flat if len(flat) <= limit else flat[: limit - 3] + "..."
    return repr(flat) if quote else flat


def load_reward(name: str) -> Reward:
    """The reward registered as ``name``, or the user function ``"module:function"``; `ConfigError`
    (one line) for an unknown name, a missing module or attribute, or something not callable."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"a reward is a registered name or 'module:function', got {name!r}")
    if ":" not in name:
        return REWARDS.get(name)
    module, _, attribute = name.partition(":")
    if not module or not attribute:
        raise ConfigError(f"reward {name!r}: write a user reward as 'module:function' (both parts)")
    try:
        reward = Entry(name, name).load()  # the registry's loader: the one place that imports plug-ins
    except ModuleNotFoundError as exc:
        missing = exc.name or str(exc)
        where = "" if module == missing or module.startswith(missing + ".") else f" (imported by {module})"
        raise ConfigError(f"reward {name!r}: no module named {missing!r}{where}; is it on PYTHONPATH?") from None
    except (AttributeError, KeyError):
        raise ConfigError(f"reward {name!r}: module {module!r} has no attribute {attribute!r}") from None
    except Exception as exc:  # a user module that fails on import: say how, in one line
        raise ConfigError(f"reward {name!r}: importing {module!r} raised {type(exc).__name__}: "
                          f"{' '.join(str(exc).split())}") from None
    if not callable(reward):
        raise ConfigError(f"reward {name!r} is a {type(reward).__name__}, not a function "
                          "reward(prompt, completion, **example_fields) -> float")
    return reward


@dataclass(frozen=True)
class GroupScores:
    """The scores of one prompt's G completions.

    totals: (G,) the weighted sum of the rewards per completion (what advantages are computed from);
    values: reward name -> (G,) its unweighted values (what the trainer logs)."""

    totals: list[float]
    values: dict[str, list[float]]

    def means(self) -> dict[str, float]:
        """{"reward": mean total, "reward/<name>": mean of each reward}: one group's log line."""
        out = {"reward": sum(self.totals) / len(self.totals)}
        out.update({f"reward/{name}": sum(v) / len(v) for name, v in self.values.items()})
        return out


class RewardSet:
    """One or several weighted rewards: ``{"correct": 1.0, "format": 0.1}`` (a YAML mapping), or a list of
    names (weight 1 each). Names are registered rewards or ``"module:function"`` paths. Weights are finite
    numbers; negative ones make a penalty."""

    def __init__(self, rewards: Mapping[str, float] | Sequence[str] | str) -> None:
        if isinstance(rewards, str):
            rewards = [rewards]
        spec = dict(rewards) if isinstance(rewards, Mapping) else {name: 1.0 for name in rewards}
        if not spec:
            raise ConfigError(f"no rewards given; name at least one of {', '.join(REWARDS)} or 'module:function'")
        self.weights: dict[str, float] = {}
        for name, weight in spec.items():
            if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight):
                raise ConfigError(f"reward {name!r}: its weight must be a finite number, got {weight!r}")
            self.weights[name] = float(weight)
        self.functions: dict[str, Reward] = {name: load_reward(name) for name in self.weights}

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.weights)

    def _call(self, name: str, prompt: str, completion: str, fields: Mapping[str, Any]) -> float:
        at = f"reward {name!r} on prompt {shorten(prompt)}"
        try:
            value = self.functions[name](prompt, completion, **fields)
        except DiffLMError as exc:
            raise InputError(f"{at}: {' '.join(str(exc).split())}") from exc
        except Exception as exc:
            raise InputError(f"{at} raised {type(exc).__name__}: {' '.join(str(exc).split())}") from exc
        if not isinstance(value, numbers.Real):  # bool is a Real: True / False count as 1.0 / 0.0 on purpose
            raise InputError(f"{at} returned a {type(value).__name__} ({shorten(repr(value), 30, quote=False)}), not a number; "
                             "a reward returns a float (or a bool)")
        value = float(value)
        if not math.isfinite(value):
            raise InputError(f"{at} returned {value}; a reward must be a finite number")
        return value

    def score_group(self, prompt: str, completions: Sequence[str], /, **fields: Any) -> GroupScores:
        """Score the G completions of ``prompt`` (``fields``: the example's record, passed to every reward
        but for fields named "prompt" or "completion", which are the arguments themselves).
        G must be >= 2: group-relative advantages compare a completion with the others of its prompt."""
        if isinstance(completions, str) or len(completions) < 2:
            count = 1 if isinstance(completions, str) else len(completions)
            raise InputError(f"rewards {', '.join(self.names)} on prompt {shorten(prompt)}: a group of {count} "
                             "completion(s); group-relative advantages need G >= 2 completions per prompt")
        for completion in completions:
            if not isinstance(completion, str):
                raise InputError(f"rewards {', '.join(self.names)} on prompt {shorten(prompt)}: a completion is a "
                                 f"{type(completion).__name__}, not text (decode it first)")
        # a record's own "prompt" / "completion" fields (the pair layout) would collide with the arguments
        fields = {k: v for k, v in fields.items() if k not in ("prompt", "completion")}
        values = {name: [self._call(name, prompt, c, fields) for c in completions] for name in self.names}
        totals = [sum(self.weights[name] * values[name][g] for name in self.names) for g in range(len(completions))]
        return GroupScores(totals, values)


def score_group(prompt: str, completions: Sequence[str], rewards: Mapping[str, float] | Sequence[str] | str, /,
                **fields: Any) -> GroupScores:
    """`RewardSet(rewards).score_group(prompt, completions, **fields)` in one call (a trainer builds the
    `RewardSet` once: it loads the rewards)."""
    return RewardSet(rewards).score_group(prompt, completions, **fields)


def _std(values: Sequence[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))  # unbiased, as torch.std


def group_advantages(rewards: Any, *, scale: str = "group", eps: float = 1e-4) -> Any:
    """Group-relative advantages: (r - mean of its group) / (std + eps).

    rewards: (B, G) - B prompts, G completions each - as nested lists (returned as lists) or a torch
    tensor (returned as a float tensor of the same shape). ``scale``: "group" divides by each group's
    standard deviation (GRPO, d1, dllm's default), "batch" by the whole batch's (less noisy for small G),
    "none" only centres (Dr. GRPO: no difficulty bias towards groups with a small spread). Standard
    deviations are unbiased (torch's default). A constant group gets zeros (0 / (0 + eps)), never NaN."""
    if scale not in ADVANTAGE_SCALES:
        raise ConfigError(f"advantage scale must be one of {', '.join(ADVANTAGE_SCALES)}, got {scale!r}")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not eps > 0:
        raise ConfigError(f"advantage eps must be a positive number, got {eps!r}")
    if hasattr(rewards, "dim"):  # a torch tensor, used through its methods (this module stays torch-free)
        if rewards.dim() != 2 or rewards.shape[1] < 2:
            raise InputError(f"rewards must be (prompts, G) with G >= 2 completions per prompt, got shape "
                             f"{tuple(rewards.shape)}")
        r = rewards if rewards.is_floating_point() else rewards.float()
        if not bool(r.isfinite().all()):
            raise InputError("rewards hold NaN or inf; score them with RewardSet, which refuses such values")
        centred = r - r.mean(dim=1, keepdim=True)
        if scale == "none":
            return centred
        std = r.std(dim=1, keepdim=True) if scale == "group" else r.std()
        return centred / (std + eps)
    groups = [[float(v) for v in group] for group in rewards]
    if not groups or any(len(group) < 2 for group in groups):
        raise InputError(f"rewards must be (prompts, G) with G >= 2 completions per prompt, got group sizes "
                         f"{[len(g) for g in groups]}")
    if not all(math.isfinite(v) for group in groups for v in group):
        raise InputError("rewards hold NaN or inf; score them with RewardSet, which refuses such values")
    batch_std = _std([v for group in groups for v in group]) if scale == "batch" else 0.0
    out = []
    for group in groups:
        mean = sum(group) / len(group)
        divisor = 1.0 if scale == "none" else (_std(group) if scale == "group" else batch_std) + eps
        out.append([(v - mean) / divisor for v in group])
    return out
