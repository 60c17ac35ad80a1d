"""Preference records for training and held-out accuracy: ``train.jsonl`` and ``heldout.jsonl``.

Candidates sampled from the SFT policy keep their token ids in the records, so whatever trains on them
(a reward model, DPO) sees exactly the tokens the policy produced. In a later round of a loop the
candidates come from that round's starting policy, and the records of every earlier round come first
in the files; the counts describe the round's new records.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from rlhf_lab.cache import artifact_key
from rlhf_lab.components import feedback_member
from rlhf_lab.run.store import Artifact, file_digests

log = logging.getLogger(__name__)

ROUND_SEED_STRIDE = 1000
"""Seed offset between loop rounds, so each round samples and labels afresh."""


def gold_agreement(records, utility) -> Optional[float]:
    """Share of the records' (better, worse) pairs that the task's hidden utility orders the same way
    (a utility tie counts 1/2): how well a feedback source agrees with the gold annotator; None
    without a single pair (nothing was measured)."""
    agree = total = 0.0
    for record in records:
        utilities = [utility(record.prompt, r) for r in record.responses]
        for better, worse in record.preference_pairs():
            agree += 1.0 if utilities[better] > utilities[worse] else 0.5 if utilities[better] == utilities[worse] else 0.0
            total += 1
    return agree / total if total else None


def build(run, sft: Artifact) -> Artifact:
    """The first round's records: candidates from the SFT policy (cached)."""
    return collect(run, sft)


def collect(run, sft: Artifact, sampler: Optional[Artifact] = None, round_: int = 1, previous: Optional[Artifact] = None,
            scorer: Optional[Artifact] = None) -> Artifact:
    """The records of round ``round_``: candidates from ``sampler`` (default: the SFT policy), after the
    records of ``previous`` (every earlier round); cached. With ``feedback.selection`` the training
    records are chosen by ``scorer`` (the previous round's reward model) or by ensembles fitted as the
    labels come in (:mod:`rlhf_lab.run.builders.active_selection`)."""
    plan = run.plan
    feedback_settings = plan.settings["feedback"]
    config = {
        "feedback": plan.section("feedback"),
        "files": file_digests(plan.section("feedback"), skip=getattr(type(feedback_settings), "unhashed_files", ())),
        "sampling": asdict(plan.candidate_sampling), "kind": plan.preference_kind, "plugin": plan.distribution("feedback"),
        "task": plan.section("task"), "data": plan.section("data"), "seed": run.cfg.seed,
    }
    upstream = [sft.key]
    if round_ > 1:
        config["round"] = round_
        upstream += [sampler.key, previous.key]
    selecting = getattr(feedback_settings, "selection", "random") != "random"
    if selecting:  # what is chosen depends on the ensemble that chooses
        config["reward"] = plan.section("reward")
        upstream += [scorer.key] if scorer is not None else []
    key = artifact_key("preferences", config, upstream)
    chooser = (sft, key, scorer) if selecting else None
    artifact = run.store.cached("preferences", key, lambda out: _label(run, sampler or sft, round_, previous, out, chooser))
    log.info("feedback: %s", artifact.metrics)
    return artifact


def _label(run, sampler: Artifact, round_: int, previous: Optional[Artifact], out: Path, chooser: Optional[tuple] = None) -> dict:
    """Sample candidates (if the source labels any), have the source label them, write both splits.
    ``chooser``: (SFT artifact, this build's key, scorer or None) when training records are selected."""
    from rlhf_lab.models.loading import load_policy

    source = run.feedback
    needs_candidates = run.plan.components["feedback"].traits["needs_candidates"]
    policy = load_policy(str(sampler.path), run.dtype).to(run.inference_device()) if needs_candidates else None
    counts = {}
    splits = (("train", run.task.train_prompts * feedback_member(source, "rounds")), ("heldout", run.task.eval_prompts))
    for split, prompts in splits:
        # Independent draws for the two splits (held-out noise must not mirror training noise), and per round.
        seed = run.cfg.seed + ROUND_SEED_STRIDE * (round_ - 1) + (0 if split == "train" else 1)
        counts.update(_split(run, policy, prompts, split, seed, previous, out, chooser if split == "train" else None))
    counts.update(feedback_member(source, "stats"))  # e.g. rows a dataset skipped
    return counts


def _split(run, policy, prompts: list[str], split: str, seed: int, previous: Optional[Artifact], out: Path,
           chooser: Optional[tuple] = None) -> dict:
    """One split's records written to ``out/<split>.jsonl`` (chosen by active selection when ``chooser``
    is given); returns its counts."""
    from rlhf_lab.data import decode_response
    from rlhf_lab.lengths import cut_records
    from rlhf_lab.records import read_jsonl, write_jsonl
    from rlhf_lab.rollout import sample_responses

    source, tokenizer = run.feedback, run.tokenizer
    candidates: list[list[str]] = []
    ids: dict[tuple, list[list[int]]] = {}
    selected: dict = {}
    if policy is not None and chooser is not None:
        from rlhf_lab.run.builders.active_selection import collect_selected

        sft, key, scorer = chooser
        records, selected = collect_selected(run, policy, prompts, seed, sft, key, scorer)
    else:
        if policy is not None:
            sampling = run.plan.candidate_sampling
            grouped = sample_responses(policy, tokenizer, prompts, sampling, samples_per_prompt=source.responses_per_prompt, seed=seed)
            candidates = [[decode_response(tokenizer, r) for r in group] for group in grouped]
            ids = {(p, tuple(texts)): group for p, texts, group in zip(prompts, candidates, grouped)}
        records = source.collect(prompts if policy is not None else [], candidates, kind=run.plan.preference_kind, seed=seed, split=split)
        for record in records:
            if record.response_ids is None:
                record.response_ids = ids.get((record.prompt, tuple(record.responses)))
    if run.limits is not None:
        records = cut_records(run.tokenizer, run.limits, records)
    counts = {f"feedback/{split}_records": len(records), f"feedback/{split}_pairs": sum(len(r.preference_pairs()) for r in records), **selected}
    agreement = gold_agreement(records, run.task.utility) if run.task.utility is not None else None
    if agreement is not None:
        counts[f"feedback/{split}_gold_agreement"] = agreement
    if previous is not None:
        records = read_jsonl(previous.path / f"{split}.jsonl") + records
        counts[f"feedback/{split}_records_total"] = len(records)
    write_jsonl(records, out / f"{split}.jsonl")
    return counts
