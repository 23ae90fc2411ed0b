"""Verifiable rewards for reinforcement learning (the ``grpo`` objective calls them).

A reward is ``reward(prompt, completion, **example_fields) -> float``: one of `difflm.registry.REWARDS`
(the task checkers of `difflm.rewards.tasks`) or a user function ``"module:function"``. `RewardSet`
scores a prompt's G completions with weighted rewards; `group_advantages` turns the totals into
group-relative advantages. See docs/training.md, "Rewards (for RL)". Torch-free.
"""

from .scoring import ADVANTAGE_SCALES, GroupScores, Reward, RewardSet, group_advantages, load_reward, score_group, shorten

__all__ = ["ADVANTAGE_SCALES", "GroupScores", "Reward", "RewardSet", "group_advantages", "load_reward", "score_group",
           "shorten"]
