"""Active selection (``feedback.selection``): which of the sampled candidate sets are sent for labelling.

``feedback.pool`` candidate sets are sampled per record wanted. A reward-model ensemble scores every
candidate; the sets whose comparisons its members are least sure of (:mod:`rlhf_lab.ops.selection`)
are labelled. In a loop round after the first, the ensemble is the previous round's reward model, and
every record of the round is chosen at once. Otherwise the labels come in ``feedback.selection_batches``
batches: the first drawn at random, and before each later one an ensemble of ``reward.ensemble_size``
members (seeds seed + m, from the SFT policy, on the run's reward settings) is fitted to the labels so
far. Held-out records are never selected: they stay the yardstick.
"""

from __future__ import annotations

import copy
import logging
from typing import Optional

import torch

from rlhf_lab.run.store import Artifact

log = logging.getLogger(__name__)


def batch_sizes(total: int, batches: int) -> list[int]:
    """``total`` records split into ``batches`` near-equal batches (the first ones larger), none empty."""
    batches = max(1, min(batches, total))
    return [total // batches + (1 if b < total % batches else 0) for b in range(batches)]


@torch.no_grad()
def member_scores(models: list, tokenizer, prompts: list[str], responses: list[list[int]], device, batch_size: int = 128) -> torch.Tensor:
    """(K, N) raw scores of each (prompt, response ids) under each member (raw: the Bradley-Terry scale
    its predictions are made on)."""
    from rlhf_lab.data import batched_pairs

    rows = []
    for model in models:
        model.eval().to(device)
        rows.append(torch.cat([model.sequence_scores(b["input_ids"], b["attention_mask"], b["position_ids"]).float().cpu()
                               for b in batched_pairs(tokenizer, prompts, responses, batch_size, device)]))
    return torch.stack(rows)


def acquisition(models: list, tokenizer, prompts: list[str], grouped: list[list[list[int]]], rule: str, device) -> torch.Tensor:
    """(S,) the acquisition value (``rule``) of each candidate set ``grouped[s]`` answering ``prompts[s]``."""
    from rlhf_lab.ops.selection import record_acquisition

    flat_prompts = [p for p, group in zip(prompts, grouped) for _ in group]
    flat = [ids for group in grouped for ids in group]
    groups, start = [], 0
    for group in grouped:
        groups.append(list(range(start, start + len(group))))
        start += len(group)
    return record_acquisition(member_scores(models, tokenizer, flat_prompts, flat, device), groups, rule)


def collect_selected(run, policy, prompts: list[str], seed: int, sft: Artifact, key: str, scorer: Optional[Artifact] = None) -> tuple[list, dict]:
    """The training records of one round, chosen by ``feedback.selection`` from a pool of candidate sets
    sampled from ``policy``; returns (records, figures). ``scorer``: the previous round's reward model
    (one or an ensemble), else ensembles are fitted between batches."""
    from rlhf_lab.data import decode_response
    from rlhf_lab.ops.selection import top_k
    from rlhf_lab.rollout import sample_responses

    settings, source, tokenizer = run.plan.settings["feedback"], run.feedback, run.tokenizer
    pool_prompts = [p for p in prompts for _ in range(settings.pool)]
    grouped = sample_responses(policy, tokenizer, pool_prompts, run.plan.candidate_sampling,
                               samples_per_prompt=source.responses_per_prompt, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    available, records, chosen_values, pool_values = list(range(len(pool_prompts))), [], [], []
    sizes = batch_sizes(len(prompts), 1 if scorer is not None else settings.selection_batches)
    for b, size in enumerate(sizes):
        if b == 0 and scorer is None:
            chosen = [available[i] for i in torch.randperm(len(available), generator=generator)[:size].tolist()]
        else:
            models = _scorer_models(run, scorer) if scorer is not None else _fit_ensemble(run, records, sft, seed, key, b)
            values = acquisition(models, tokenizer, [pool_prompts[i] for i in available], [grouped[i] for i in available],
                                 settings.selection, run.inference_device())
            picked = top_k(values, size, generator)
            chosen = [available[j] for j in picked]
            chosen_values.append(float(values[picked].mean()))
            pool_values.append(float(values.mean()))
            log.info("feedback: selection batch %d of %d: %d of %d candidate sets by %s (mean %.4g, pool %.4g)",
                     b + 1, len(sizes), size, len(available), settings.selection, chosen_values[-1], pool_values[-1])
            del models
        taken = set(chosen)
        available = [i for i in available if i not in taken]
        batch_prompts = [pool_prompts[i] for i in chosen]
        texts = [[decode_response(tokenizer, r) for r in grouped[i]] for i in chosen]
        ids = {(p, tuple(t)): grouped[i] for p, t, i in zip(batch_prompts, texts, chosen)}
        new = source.collect(batch_prompts, texts, kind=run.plan.preference_kind, seed=seed + 7919 * b, split="train")
        for record in new:
            if record.response_ids is None:
                record.response_ids = ids.get((record.prompt, tuple(record.responses)))
        records += new
    figures = {"feedback/train_pool_sets": len(pool_prompts), "feedback/train_selection_batches": len(sizes)}
    if chosen_values:
        figures[f"feedback/train_selected_{settings.selection}"] = sum(chosen_values) / len(chosen_values)
        figures[f"feedback/train_pool_{settings.selection}"] = sum(pool_values) / len(pool_values)
    return records, figures


def _scorer_models(run, scorer: Artifact) -> list:
    """The previous round's reward model(s), raw (no normaliser)."""
    from rlhf_lab.models.loading import load_value_model
    from rlhf_lab.rewards.ensemble_files import member_dirs

    return [load_value_model(str(path), run.dtype) for path in member_dirs(scorer.path)]


def _fit_ensemble(run, records: list, sft: Artifact, seed: int, key: str, batch: int) -> list:
    """An ensemble of ``reward.ensemble_size`` members fitted to ``records`` from the SFT policy."""
    from rlhf_lab.lengths import cut_records
    from rlhf_lab.run.builders.reward_model import fit_member

    if run.limits is not None:
        records = cut_records(run.tokenizer, run.limits, [copy.deepcopy(r) for r in records])
    size = run.plan.settings["reward"].ensemble_size
    return [fit_member(run, records, [], sft, f"{key}-selection{batch}-member{m}", f"selection{batch}_member{m}", seed + m)[0]
            for m in range(size)]
