"""Experiments that reproduce a paper's claims by one command (`difflm experiment NAME`).

`ablations`: DiffuLLaMA's Table 3 (adaptation choices, then SFT on GSM-style arithmetic) and the
adapted-vs-scratch gap across model sizes. `plan` (arms, budgets, jobs; torch-free), `runner`
(resumable jobs, two at a time), `ablations` (data, results), `report` (tables, plot).
"""
