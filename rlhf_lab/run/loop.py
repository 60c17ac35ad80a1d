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

from rlhf_lab.run.resolver import inputs_of, timed

log = logging.getLogger("rlhf_lab")

ROUND_FIGURES = ("gold_reward", "proxy_reward", "kl", "win_rate", "pref_accuracy", "response_length")
"""The evaluation figures kept per round (each with its standard error where it has one); the held-out
preference accuracy is on the first round's held-out records, so rounds are compared on the same pairs."""


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


def run_rounds(run, stages, timings: dict) -> tuple[dict, list, object]:
    """Every round; returns the last round's (figures, samples, policy artifact) and writes the round table.

    :param stages: the run's :class:`~rlhf_lab.run.resolver.Resolver`: round 1's artifacts are the run's own.
    """
    from rlhf_lab.run.builders import policy as policy_stage
    from rlhf_lab.run.builders import preferences as preference_stage
    from rlhf_lab.run.evaluation import evaluate

    rounds = run.plan.settings["loop"].rounds
    sft, reference = stages.get("sft"), stages.get("reference")
    start, preferences, reward_model, rows = sft, None, None, []
    figures, samples, trained = {}, [], None
    for round_ in range(1, rounds + 1):
        log.info("loop: round %d of %d", round_, rounds)
        if round_ == 1:
            preferences = stages.get("preferences")
        else:
            preferences = preference_stage.collect(run, sft, sampler=start, round_=round_, previous=preferences, scorer=reward_model)
        reward_model, reward = _round_reward(run, stages, preferences, round_, timings)
        with timed(timings, run.trainer_stage("policy", round_)):
            trained = policy_stage.optimise(run, start, reference, reward, reward_model, preferences, round_)
        stage = "eval" if round_ == rounds else f"eval_round{round_}"
        figures, samples = evaluate(run, stages, trained.handle, trained.device, reward, timings, stage=stage)
        figures.update(preferences.metrics)
        if reward_model is not None:
            figures.update(reward_model.metrics)
        rows.append(round_row(round_, run.plan.algo_name, figures))
        start = trained.artifact
    log.info("loop: per-round figures\n%s", write_round_table(rows, run.run_dir))
    figures["loop/rounds"] = rounds
    for row in rows:
        for name, value in row.items():
            if name != "round":
                figures[f"round{row['round']}/{name}"] = value
    return figures, samples, trained.artifact


def _round_reward(run, stages, preferences, round_: int, timings: dict):
    """(reward model artifact or None, reward function or None) of a round: round 1's are the run's own;
    a later round retrains the reward model on ``preferences`` (every record so far)."""
    from rlhf_lab.run.builders import reward_model as reward_model_stage

    if "reward" not in run.plan.consumes:
        return None, None
    if round_ == 1:
        return (stages.get("reward_model") if run.plan.learned_reward else None), stages.get("reward")
    init = stages.get(inputs_of(run.plan.builders["reward_model"])[-1])  # the artifact round 1's model started from
    with timed(timings, run.trainer_stage("reward_model", round_)):
        model = reward_model_stage.train(run, preferences, init, round_)
    reward = run.reward.reward_function({"reward_model": model}, run.tokenizer, run.dtype)
    return model, reward.to(run.inference_device())
