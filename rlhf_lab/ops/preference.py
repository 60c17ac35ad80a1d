"""Direct preference losses on sequence log-probabilities: DPO (and conservative DPO), IPO, SimPO.

Every loss returns one value per preference pair, shape (B,); the caller reduces (usually the mean).
Inputs are summed log-probabilities of the chosen / rejected responses, shape (B,), except SimPO,
which works on per-token-averaged log-probabilities and has no reference model.

With ``h = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)``, the log-ratio margin of
the policy over the reference, DPO and IPO are both functions of ``h`` alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def implicit_rewards(policy_logps: torch.Tensor, reference_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO's implicit reward ``beta * (log pi(y|x) - log pi_ref(y|x))`` (Rafailov et al. 2023, eq. 5).

    It is the reward, up to a prompt-only constant, for which the policy is KL-optimal; logging it for
    chosen and rejected responses shows whether training separates them.
    """
    return beta * (policy_logps - reference_logps)


def _margin(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
) -> torch.Tensor:
    return (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)


def _smoothed_logistic(logits: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    # Binary cross-entropy against the soft label (1 - eps) for "chosen wins": with probability eps the
    # recorded preference is taken to be flipped (Mitchell 2023, "A note on DPO with noisy preferences").
    # logsigmoid keeps both terms finite for large |logits|, unlike log(sigmoid(x)).
    return -(1.0 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


def dpo_sigmoid_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """DPO loss (Rafailov et al. 2023, eq. 7), conservative DPO when ``label_smoothing > 0``.

    ``-(1 - eps) * logsigmoid(beta * h) - eps * logsigmoid(-beta * h)``.

    :param policy_chosen: (B,) summed log-probs of the chosen responses under the policy.
    :param policy_rejected: (B,) the same for the rejected responses.
    :param ref_chosen: (B,) summed log-probs of the chosen responses under the reference.
    :param ref_rejected: (B,) the same for the rejected responses.
    :param beta: KL-regularisation strength; larger keeps the policy closer to the reference.
    :param label_smoothing: assumed probability that a preference label is flipped, in [0, 0.5).
    :returns: (B,) per-pair losses.
    """
    h = _margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    return _smoothed_logistic(beta * h, label_smoothing)


def ipo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """IPO loss (Azar et al. 2023, eq. 17): ``(h - 1 / (2 * beta))^2``.

    A squared regression of the margin onto a finite target, so unlike DPO the loss does not keep
    pushing ``h`` to infinity on deterministic preferences; ``beta`` plays the role of the paper's tau.

    The function uses whatever log-probs it is given. TRL's ``loss_type="ipo"`` divides each sequence's
    summed log-prob by its number of completion tokens before this formula; pass length-averaged
    log-probs to reproduce that.

    :returns: (B,) per-pair losses.
    """
    h = _margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    return (h - 1.0 / (2.0 * beta)) ** 2


def simpo_loss(
    policy_chosen_avg: torch.Tensor,
    policy_rejected_avg: torch.Tensor,
    beta: float,
    gamma: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """SimPO loss (Meng et al. 2024): reference-free, length-normalised, with a target margin.

    ``h = beta * (c - r) - gamma`` and ``-(1 - eps) * logsigmoid(h) - eps * logsigmoid(-h)``, where
    ``c, r`` are the mean per-token log-probs of the chosen / rejected responses under the policy.
    ``gamma`` is the absolute reward margin; the SimPO code base configures it as
    ``gamma_beta_ratio = gamma / beta`` and TRL's CPO trainer calls it ``simpo_gamma``.

    :param policy_chosen_avg: (B,) per-token-averaged log-probs of the chosen responses.
    :param policy_rejected_avg: (B,) the same for the rejected responses.
    :param beta: reward scale.
    :param gamma: target reward margin (in reward units, i.e. after scaling by beta).
    :param label_smoothing: assumed probability that a preference label is flipped, in [0, 0.5).
    :returns: (B,) per-pair losses.
    """
    h = beta * (policy_chosen_avg - policy_rejected_avg) - gamma
    return _smoothed_logistic(h, label_smoothing)
