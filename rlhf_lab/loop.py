"""Iterated RLHF: ``loop.rounds=N`` repeats feedback -> reward model -> policy with the current policy.

Round 1 is the single-round run. Each later round samples candidates from the policy the round before
trained, has the configured feedback source label them (people, bots, a judge, simulated annotators),
adds them to every record so far, retrains the reward model on all of them (from the same
initialisation), and optimises the policy again starting from where it is, with the SFT policy as the
KL reference throughout. An algorithm that consumes preferences (DPO) trains on all records so far:
online, iterative DPO. Every round is evaluated against the SFT policy on the held-out prompts.

Each round's preferences, reward model and policy are artifacts in the content-addressed cache, keyed by
the round and by the policy that sampled the candidates, so a run stopped in the middle and started
again with the same command resumes at the first round not built; with ``feedback=human`` the labels of
an interrupted round are in the label database and are not asked again.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

from rlhf_lab.errors import RlhfLabError

log = logging.getLogger("rlhf_lab")

ROUND_FIGURES = ("gold_reward", "proxy_reward", "kl", "win_rate", "response_length")
"""The evaluation figures kept per round (each with its standard error where it has one)."""


def check_loop(pipeline) -> None:
    """Refuse, before any work, a loop the run cannot do."""
    rounds = pipeline.loop.rounds
    if rounds == 1:
        return
    if pipeline.stop_after:
        raise RlhfLabError(f"loop.rounds={rounds} runs whole rounds; it cannot be combined with stop_after={pipeline.stop_after}")
    if not pipeline.uses_preferences:
        raise RlhfLabError(
            f"loop.rounds={rounds}: algo={pipeline.algo_cfg.name} with this reward collects no feedback, so there is nothing "
            "to repeat (a rule reward or reward.path needs none). Use a learned reward model or an algorithm that consumes preferences."
        )
    if not getattr(pipeline.feedback_source, "needs_candidates", False):
        raise RlhfLabError(
            f"loop.rounds={rounds}: feedback={pipeline.feedback_cfg.name} reads fixed records and labels nothing the policy "
            "samples; a loop needs a source that labels candidates (simulated, human, ai_judge)"
        )
    if not getattr(pipeline.algo.factory, "trains_policy", True):
        raise RlhfLabError(f"loop.rounds={rounds}: algo={pipeline.algo_cfg.name} trains no policy, so later rounds would sample what the first did")
    if pipeline.lora is not None:
        raise RlhfLabError(f"loop.rounds={rounds} with model.lora is not supported yet: set model.lora.r=0")


def round_row(round_: int, algo: str, metrics: dict) -> dict:
    """One row of the per-round table."""
    row = {"round": round_}
    for figure in ROUND_FIGURES:
        for suffix in ("", "_se"):
            key = f"eval/{algo}/{figure}{suffix}"
            if key in metrics:
                row[figure + suffix] = metrics[key]
    for key in ("reward/accuracy", "feedback/train_records", "feedback/train_records_total", "feedback/train_gold_agreement"):
        if key in metrics:
            row[key.split("/", 1)[1]] = metrics[key]
    return row


def write_round_table(rows: list[dict], run_dir: Path) -> str:
    """``rounds.md`` and ``rounds.csv`` in the run directory; returns the Markdown."""
    columns = list(dict.fromkeys(c for row in rows for c in row))

    def cell(value) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    markdown = "\n".join(lines) + "\n"
    (run_dir / "rounds.md").write_text(markdown)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    (run_dir / "rounds.csv").write_text(buffer.getvalue())
    (run_dir / "rounds.json").write_text(json.dumps(rows, indent=2) + "\n")
    return markdown


def run_rounds(pipeline) -> tuple[dict, list, object]:
    """Every round; returns the last round's (metrics, samples, policy artifact) and writes the round table."""
    from rlhf_lab.models.loading import load_policy
    from rlhf_lab.policy import ModelPolicy
    from rlhf_lab.training import inference_device

    p = pipeline
    sft = p.need("sft")
    p.need("reference")
    start, preferences, rows = sft, None, []
    metrics, samples, policy = {}, [], None
    for round_ in range(1, p.loop.rounds + 1):
        log.info("loop: round %d of %d", round_, p.loop.rounds)
        preferences = p.need("preferences") if round_ == 1 else p.build_preferences(sft, policy=start, round_=round_, previous=preferences)
        reward_model, reward = p.round_reward(preferences, round_)
        policy = p.train_policy(start, reward, reward_model, preferences, round_)
        device = inference_device(p.cfg)
        handle = ModelPolicy(load_policy(str(policy.path), p.model_cfg.dtype, key=f"policy of round {round_}").to(device), p.tokenizer)
        metrics, samples = p.evaluate(handle, device, reward, stage="eval" if round_ == p.loop.rounds else f"eval_round{round_}")
        metrics.update(preferences.metrics)
        if reward_model is not None:
            metrics.update(reward_model.metrics)
        rows.append(round_row(round_, p.algo_cfg.name, metrics))
        start = policy
    log.info("loop: per-round figures\n%s", write_round_table(rows, p.run_dir))
    metrics["loop/rounds"] = p.loop.rounds
    for row in rows:
        for name, value in row.items():
            if name != "round":
                metrics[f"round{row['round']}/{name}"] = value
    return metrics, samples, policy
