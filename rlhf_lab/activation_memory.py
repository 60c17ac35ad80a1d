"""What a training forward keeps for its backward, measured on a two-layer copy of the model.

Activation memory depends on the architecture (the MLP's width and activation, the attention kernel
and whether a mask sends it down a path that keeps its weights, LoRA's frozen layers, which keep no
inputs), so it is measured rather than derived. :func:`probe` builds the model's config with two
layers and a small vocabulary on the CPU, runs a forward and backward on two short rows (one of them
padded) the way the stage does, and counts with ``torch.autograd.graph.saved_tensors_hooks`` the
bytes of every distinct storage saved for the backward that is not a weight, attributed to the
decoder layer that was running when it was saved. The second layer gives the per-layer figure; what
was saved outside the layers (embeddings, final norm) the rest. Two lengths separate the part that
grows with a row's length (the attention weights of an eager or masked kernel) from the part that
does not. The output layer is left out on purpose: a loss reads its logits at some positions only,
and :meth:`ActivationProfile.training` counts them per position read.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

PROBE_VOCAB = 128
PROBE_LENGTHS = (32, 64)
LOGIT_COPIES = 3
"""Vocabulary-sized rows alive at once per position a loss reads: the fp32 logits, their
log-softmax (kept for the backward) and the gradient flowing back."""
CHECKPOINTED_LAYER_COPIES = 3
"""Layers' worth of activations alive at the peak of a checkpointed backward in the supervised stages
(SFT, reward model, DPO; see :meth:`ActivationProfile.training`): measured on the benchmark's ladder,
not derived. A bare forward and backward of the same batches holds about one layer's worth (0.5-1.1
measured at the 25m shape); these stages' peaks sit 0.3-1.1 GB above that, which three layers cover."""
ON_POLICY_CHECKPOINTED_LAYER_COPIES = 1
"""The same for the on-policy update (GRPO, RLOO, PPO), whose peaks on the ladder are those of the bare
step: three layers' worth overcounted its 64 rows of 600-700 positions 2.4 times at 25m and 125m."""


@dataclass(frozen=True)
class ActivationProfile:
    """Bytes per token that one model's training forward keeps: in each decoder layer (a constant part
    and a part that grows with the row's length) and outside the layers; and what generation caches."""

    layers: int
    per_layer: float
    per_layer_per_position: float
    outside: float
    vocab: int
    hidden_bytes: int
    cache_per_token: int

    def per_token_in_layer(self, length: int) -> float:
        return self.per_layer + self.per_layer_per_position * length

    def training(self, rows: int, length: int, read_tokens: int = 0, checkpointing: bool = False, on_policy: bool = False) -> int:
        """Peak bytes of a training step's activations on ``rows`` x ``length`` positions (padding costs
        as much as a real token) whose loss reads the logits at ``read_tokens`` positions: what the
        forward keeps, plus one layer's worth, because the backward of a layer holds the gradients of
        its activations beside them. With activation checkpointing a layer keeps only its input and one
        layer is rebuilt at a time; the rebuilt layer costs three layers' worth at the peak (its
        activations, their gradients, and what the recomputation leaves until the layer's backward
        ends), a factor measured on the benchmark's ladder (benchmarks/real_lengths.py), not derived;
        ``on_policy``: an on-policy update's, with its own factor (:data:`ON_POLICY_CHECKPOINTED_LAYER_COPIES`)."""
        tokens = rows * length
        layer = self.per_token_in_layer(length)
        rebuilt = ON_POLICY_CHECKPOINTED_LAYER_COPIES if on_policy else CHECKPOINTED_LAYER_COPIES
        blocks = self.layers * self.hidden_bytes + rebuilt * layer if checkpointing else (self.layers + 1) * layer
        return int(tokens * (blocks + self.outside) + LOGIT_COPIES * read_tokens * self.vocab * 4)

    def generation(self, rows: int, length: int) -> int:
        """Bytes of the key/value cache of ``rows`` sequences of ``length`` positions."""
        return rows * length * self.cache_per_token


def _probe_config(config):
    cfg = copy.deepcopy(config)
    cfg.num_hidden_layers = 2
    if isinstance(getattr(cfg, "layer_types", None), list):
        cfg.layer_types = cfg.layer_types[:2]
    cfg.vocab_size = PROBE_VOCAB
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        if getattr(cfg, key, None) is not None:
            setattr(cfg, key, 0)
    return cfg


def _decoder_layers(model):
    from torch import nn

    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == 2 and not isinstance(module[0], (nn.Linear, nn.Embedding)):
            return module
    raise ValueError(f"{type(model).__name__}: no list of decoder layers found")


def _build(config, dtype: str, value: bool, lora, dropout: bool):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from rlhf_lab.models.loading import disable_dropout, fuse_activations

    cfg = _probe_config(config)
    torch.manual_seed(0)
    if value:
        from rlhf_lab.models.value_model import ValueModel

        cfg.num_labels = 1
        model = ValueModel(fuse_activations(AutoModelForSequenceClassification.from_config(cfg, dtype=getattr(torch, dtype))))
        if lora is not None:
            from rlhf_lab.models.lora import add_value_adapters

            add_value_adapters(model, lora)
    else:
        model = fuse_activations(AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, dtype)))
        if lora is not None:
            from rlhf_lab.models.lora import add_policy_adapters

            model = add_policy_adapters(model, lora)
    if not dropout:
        disable_dropout(model)
    return model.train()


def _loss(model, length: int, value: bool, share_prompt: bool):
    """A stage's forward on two rows of ``length`` positions, the second a quarter padding."""
    import torch

    from rlhf_lab.data import collate_prompt_groups, collate_sequences

    g = torch.Generator().manual_seed(length)

    def ids(n: int) -> list[int]:
        return torch.randint(1, PROBE_VOCAB, (n,), generator=g).tolist()

    full, short = length, length - length // 4
    if value:
        from rlhf_lab.rewards.base import RewardObjective

        if share_prompt:  # the prompt once, then two responses, as reward-model batches are laid out
            batch = collate_prompt_groups([(ids(n // 2), [ids(n // 4), ids(n - n // 2 - n // 4)]) for n in (full, short)], 0)
        else:
            batch = collate_sequences([ids(full // 2), ids(short // 2)], [ids(full - full // 2), ids(short - short // 2)], 0)
        return RewardObjective.batch_scores(model, batch).sum()
    from rlhf_lab.models.logits import logits_at

    mask = torch.ones(2, length, dtype=torch.long)
    mask[1, short:] = 0
    inputs = {"input_ids": torch.randint(1, PROBE_VOCAB, (2, length), generator=g), "attention_mask": mask}
    return logits_at(model, inputs, torch.tensor([0, 1]), torch.tensor([full - 1, short - 1])).float().sum()


def _saved_bytes(model, length: int, value: bool, share_prompt: bool) -> tuple[int, int]:
    """(bytes saved inside the second decoder layer, bytes saved outside any layer) for one forward."""
    import torch

    weights = {t.untyped_storage().data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    layers, state, saved = _decoder_layers(model), {"layer": None}, {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if pointer not in weights and pointer not in saved:
            saved[pointer] = (state["layer"], storage.nbytes())
        return tensor

    def enter(index):
        return lambda module, args: state.update(layer=index)

    handles = [layer.register_forward_pre_hook(enter(i)) for i, layer in enumerate(layers)]
    handles += [layer.register_forward_hook(lambda module, args, out: state.update(layer=None)) for layer in layers]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            loss = _loss(model, length, value, share_prompt)
        loss.backward()
    finally:
        for handle in handles:
            handle.remove()
    inside = sum(n for layer, n in saved.values() if layer == 1)
    outside = sum(n for layer, n in saved.values() if layer is None)
    return inside, outside


def probe(model_dir: str, dtype: str = "float32", *, value: bool = False, share_prompt: bool = False,
          lora=None, dropout: bool = False, config=None) -> ActivationProfile:
    """The :class:`ActivationProfile` of the model in ``model_dir`` as a stage trains it: a causal LM
    (``value=False``) or a value model (reward model, critic; ``share_prompt``: reward batches with the
    prompt once per record), with ``lora`` adapters (:class:`~rlhf_lab.config.LoraSettings`) or
    without, dropout on or off. Costs a two-layer model's forward and backward on 2 x 64 tokens."""
    from transformers import AutoConfig

    from rlhf_lab.memory import BYTES

    config = config or AutoConfig.from_pretrained(model_dir)
    model = _build(config, dtype, value, lora, dropout)
    (short, long_) = PROBE_LENGTHS
    per_token = []
    outside = 0.0
    for length in PROBE_LENGTHS:
        tokens = 2 * length
        inside, out = _saved_bytes(model, length, value, share_prompt)
        per_token.append(inside / tokens)
        outside = max(outside, out / tokens)
    growth = max(0.0, (per_token[1] - per_token[0]) / (long_ - short))
    size = BYTES[dtype]
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return ActivationProfile(
        layers=config.num_hidden_layers, per_layer=per_token[1] - growth * long_, per_layer_per_position=growth,
        outside=outside, vocab=config.vocab_size, hidden_bytes=config.hidden_size * size,
        cache_per_token=2 * config.num_hidden_layers * kv_heads * head_dim * size,
    )


def probe_or_none(model_dir: str, **kwargs) -> Optional[ActivationProfile]:
    """:func:`probe`, or None for an architecture it cannot build (the estimate then leaves activations out)."""
    import logging

    try:
        return probe(model_dir, **kwargs)
    except Exception as exc:  # an estimate must never stop a run that would otherwise go
        logging.getLogger(__name__).warning("memory: activations of %s not measured (%s: %s)", model_dir, type(exc).__name__, exc)
        return None
