"""Backbone + scalar head: a value per token, and a sequence score at the last non-padding token.

Used for reward models and PPO critics. The wrapped model is a Hugging Face
``AutoModelForSequenceClassification`` with one label, so a saved reward model loads with plain
transformers; its ``score`` head is applied at every position instead of only the last.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from rlhf_lab.ops.sequence import last_token_index

NORMALISER_FILE = "reward_normaliser.json"


@dataclass
class RewardNormaliser:
    """Affine map that gives the SFT policy's samples mean 0 and std 1 under the reward model."""

    mean: float = 0.0
    std: float = 1.0

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        return (scores - self.mean) / self.std

    @classmethod
    def fit(cls, scores: torch.Tensor) -> "RewardNormaliser":
        from rlhf_lab.errors import RlhfLabError

        if scores.numel() < 2 or not bool(torch.isfinite(scores).all()):
            raise RlhfLabError(f"cannot fit a reward normaliser on {scores.numel()} scores ({int((~torch.isfinite(scores)).sum())} not finite)")
        return cls(mean=float(scores.mean()), std=float(scores.std().clamp(min=1e-6)))

    def save(self, directory: Path) -> None:
        (Path(directory) / NORMALISER_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path, missing_ok: bool = False) -> "RewardNormaliser":
        """The normaliser saved beside a reward model; without one, an error (or, with ``missing_ok``,
        the identity, for a reward model trained elsewhere)."""
        from rlhf_lab.errors import RlhfLabError

        path = Path(directory) / NORMALISER_FILE
        if not path.is_file() and missing_ok:
            return cls()
        if not path.is_file():
            raise RlhfLabError(f"{path} is missing: the reward model in {directory} has no normaliser")
        return cls(**json.loads(path.read_text()))


CUSTOM_MASK_ATTENTION = ("sdpa", "eager")
"""Attention implementations that apply a given 4D mask as it is (flash-attention kernels do not)."""


def attention_implementation(model: nn.Module) -> str:
    """The attention implementation a Hugging Face model runs with ("sdpa", "eager", ...)."""
    config = getattr(model, "config", None)
    return str(getattr(config, "_attn_implementation", None) or "eager")


def custom_mask_problem(model: nn.Module) -> str | None:
    """Why ``model`` cannot take one ready 4D mask for all its layers, or None when it can.

    A given 4D mask reaches every layer as it is: an attention kernel that ignores it, or layers
    that should see only a sliding window or a chunk, would silently attend to more than they should.
    """
    attention = attention_implementation(model)
    if attention not in CUSTOM_MASK_ATTENTION:
        return f"it runs {attention} attention (a custom mask needs {' or '.join(CUSTOM_MASK_ATTENTION)})"
    config = getattr(model, "config", None)
    layer_types = set(getattr(config, "layer_types", None) or [])
    if layer_types - {"full_attention"}:
        return f"it has {', '.join(sorted(layer_types - {'full_attention'}))} layers"
    if not layer_types and getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return f"it attends within a sliding window of {config.sliding_window} tokens"
    return None


class ValueModel(nn.Module):
    """Per-token scalar values from a sequence-classification model's backbone and head."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        head = getattr(model, "score", None) or getattr(model, "classifier", None)
        if head is None:
            raise TypeError(f"{type(model).__name__} has no `score` or `classifier` head")
        self.head = head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """Values (B, L), one per position; ``attention_mask`` is (B, L) padding or a ready (B, 1, L, L) mask."""
        hidden = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).last_hidden_state
        return self.head(hidden).squeeze(-1).float()

    def sequence_scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """Scores (B,): the value at the last non-padding token of each row."""
        values = self(input_ids, attention_mask, position_ids)
        return values.gather(1, last_token_index(attention_mask).unsqueeze(1)).squeeze(1)

    def group_scores(self, batch: dict) -> torch.Tensor:
        """Scores (N,) of the responses of a :func:`~rlhf_lab.data.collate_prompt_groups` batch: one
        forward per row, each response attending to the prompt and itself only; equal to
        :meth:`sequence_scores` of each prompt + response alone."""
        from rlhf_lab.ops.sequence import shared_prompt_mask

        problem = custom_mask_problem(self.model)
        if problem is not None:
            from rlhf_lab.errors import RlhfLabError

            raise RlhfLabError(f"a batch with shared prompts (reward.share_prompt) cannot be scored by this model: {problem}")
        mask = shared_prompt_mask(batch["segment_ids"])
        if attention_implementation(self.model) == "eager":  # eager attention adds its mask to the scores
            mask = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill(~mask, torch.finfo(torch.float32).min)
        # Through forward (not the backbone directly): a sharded model gathers its weights in the root's hooks.
        values = self(batch["input_ids"], mask, batch["position_ids"])
        return values[batch["score_rows"], batch["score_cols"]]

    @torch.no_grad()
    def fold_normaliser(self, normaliser: RewardNormaliser) -> None:
        """Make the head output ``normaliser(value)``: a critic initialised from a reward model then
        predicts returns on the same (normalised) scale as the scores it is regressed on.

        The head becomes ``Linear(w / std, bias = (b - mean) / std)``; only this module uses it, the
        wrapped model's own head is left as it was.
        """
        old = self.head
        head = nn.Linear(old.in_features, 1, bias=True, device=old.weight.device, dtype=old.weight.dtype)
        head.weight.copy_(old.weight / normaliser.std)
        bias = old.bias if old.bias is not None else torch.zeros(1, device=old.weight.device, dtype=old.weight.dtype)
        head.bias.copy_((bias - normaliser.mean) / normaliser.std)
        self.head = head
        # The wrapped model's own head stays (saving it keeps a plain transformers model) but is
        # frozen: an unused trainable parameter would stall DDP's gradient reduction.
        old.requires_grad_(False)

    def save_pretrained(self, directory: Path) -> None:
        self.model.save_pretrained(directory)
