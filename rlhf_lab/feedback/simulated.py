"""Simulated annotators: the task's hidden utility seen through Bradley-Terry noise.

Annotator ``i`` has a rationality temperature ``beta_i``. A ranking of K responses is drawn from the
Plackett-Luce model ``sort(u_k / beta_i + Gumbel noise)``, whose pairwise marginals are exactly
Bradley-Terry: P(a > b) = sigmoid((u_a - u_b) / beta_i). A rating is ``u + beta_i * Normal(0, 1)``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from rlhf_lab.feedback.selection_config import SelectionConfig
from rlhf_lab import hookimpl
from rlhf_lab.errors import RlhfLabError
from rlhf_lab.noise import gaussian_ratings, plackett_luce_ranking
from rlhf_lab.records import PreferenceRecord


@dataclass
class SimulatedFeedbackConfig(SelectionConfig):
    """Schema of ``feedback=simulated``."""

    name: str = "simulated"
    num_annotators: int = 3
    """Annotators in the pool; each record is labelled by one, drawn at random."""
    beta: float = 0.3
    """Mean rationality temperature: smaller is less noisy. Annotators spread over [beta/2, 3*beta/2]."""
    responses_per_prompt: int = 4
    """K: candidates sampled from the SFT policy per prompt (a ranking gives K-choose-2 pairs)."""
    rounds: int = 6
    """Times each training prompt is sent for labelling (fresh candidates each time)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta <= 0 or self.num_annotators < 1 or self.responses_per_prompt < 2 or self.rounds < 1:
            raise ValueError("feedback needs beta > 0, num_annotators >= 1, responses_per_prompt >= 2, rounds >= 1")


class SimulatedFeedback:
    """Labels candidates with a pool of noisy annotators sharing the task's utility."""

    needs_candidates = True

    def __init__(self, cfg: SimulatedFeedbackConfig, task) -> None:
        if task.utility is None:
            raise RlhfLabError("feedback=simulated needs a task with a hidden utility; this task has none")
        self.cfg, self.utility = cfg, task.utility
        self.responses_per_prompt, self.rounds = cfg.responses_per_prompt, cfg.rounds

    def _betas(self) -> list[float]:
        n = self.cfg.num_annotators
        if n == 1:
            return [self.cfg.beta]
        return [self.cfg.beta * (0.5 + i / (n - 1)) for i in range(n)]

    def collect(self, prompts: list[str], candidates: list[list[str]], kind: str, seed: int, split: str = "train") -> list[PreferenceRecord]:
        rng = random.Random(seed)
        betas = self._betas()
        records = []
        for prompt, responses in zip(prompts, candidates):
            annotator = rng.randrange(len(betas))
            beta = betas[annotator]
            utilities = [self.utility(prompt, r) for r in responses]
            record = PreferenceRecord(prompt=prompt, responses=list(responses), annotator=f"sim{annotator}", meta={"beta": beta})
            if kind == "ranking":
                record.ranking = plackett_luce_ranking(utilities, beta, rng)
            elif kind == "rating":
                record.scores = gaussian_ratings(utilities, beta, rng)
            else:
                raise RlhfLabError(f"feedback=simulated cannot produce '{kind}' feedback")
            records.append(record)
        return records


@hookimpl
def rlhf_lab_register_feedback_sources(register):
    register("simulated", SimulatedFeedback, SimulatedFeedbackConfig)
