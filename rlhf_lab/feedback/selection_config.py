"""The settings of active selection, shared by every feedback source that labels sampled candidates."""

from __future__ import annotations

from dataclasses import dataclass

SELECTION_RULES = ("random", "disagreement", "information")
"""The values of ``feedback.selection`` (the two rules are :data:`rlhf_lab.ops.selection.ACQUISITIONS`)."""


@dataclass
class SelectionConfig:
    """Which sampled candidates are sent for labelling (``feedback.selection``). Mixed into the schemas
    of ``feedback=simulated``, ``human`` and ``ai_judge``; held-out records are always drawn at random."""

    selection: str = "random"
    """``random``: every candidate set drawn is labelled. ``disagreement`` or ``information``: ``pool``
    candidate sets are drawn per record wanted, and the ones a reward-model ensemble is least sure of are
    labelled: the variance of its members' predicted P(a better than b) (Christiano et al. 2017), or the
    mutual information between the label and the member (BALD). The ensemble is the previous round's
    reward model in a loop (``loop.rounds``); otherwise the labels come in ``selection_batches``
    batches, the first at random, with an ensemble of ``reward.ensemble_size`` members trained on the
    labels so far before each later batch."""
    pool: int = 4
    """Candidate sets drawn per record labelled when ``selection`` is not random (fresh candidates each)."""
    selection_batches: int = 4
    """Batches the training labels come in without a previous round's reward model (the first at random)."""

    def __post_init__(self) -> None:
        if self.selection not in SELECTION_RULES:
            raise ValueError(f"feedback.selection must be one of {', '.join(SELECTION_RULES)}, got {self.selection!r}")
        if self.pool < 1 or self.selection_batches < 1:
            raise ValueError(f"feedback.pool and feedback.selection_batches must be >= 1, got {self.pool} and {self.selection_batches}")
        if self.selection != "random" and self.pool < 2:
            raise ValueError(f"feedback.selection={self.selection} chooses from a pool: set feedback.pool >= 2")
