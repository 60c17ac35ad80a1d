"""Load policies, tokenizers and scalar-head models through ``from_pretrained``."""

from __future__ import annotations

from pathlib import Path

from rlhf_lab.errors import RlhfLabError

DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def _check_source(name_or_path: str, key: str) -> None:
    """Fail early with the key named when a local-looking path does not exist."""
    looks_local = name_or_path.startswith((".", "/", "~")) or Path(name_or_path).exists() or name_or_path.count("/") > 1
    if looks_local and not Path(name_or_path).expanduser().is_dir():
        raise RlhfLabError(f"{key}: model directory '{name_or_path}' does not exist")


def _load(loader, name_or_path: str, key: str, **kwargs):
    _check_source(name_or_path, key)
    try:
        return loader.from_pretrained(str(Path(name_or_path).expanduser()) if Path(name_or_path).expanduser().is_dir() else name_or_path, **kwargs)
    except (OSError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RlhfLabError(f"{key}: could not load '{name_or_path}': {first_line}") from None


def load_tokenizer(name_or_path: str, key: str = "model.name_or_path"):
    """Tokenizer with a pad token (the EOS token if the model has none)."""
    from transformers import AutoTokenizer

    tokenizer = _load(AutoTokenizer, name_or_path, key)
    if tokenizer.eos_token_id is None:
        raise RlhfLabError(f"{key}: tokenizer of '{name_or_path}' has no EOS token; responses could never end")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_policy(name_or_path: str, dtype: str = "float32", key: str = "model.name_or_path"):
    """A causal LM (``AutoModelForCausalLM``)."""
    import torch
    from transformers import AutoModelForCausalLM

    return _load(AutoModelForCausalLM, name_or_path, key, dtype=getattr(torch, DTYPES[dtype]))


def load_value_model(name_or_path: str, dtype: str = "float32", key: str = "model.name_or_path"):
    """A :class:`~rlhf_lab.models.value_model.ValueModel` from a causal-LM or sequence-classification dir."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from rlhf_lab.models.value_model import ValueModel

    model = _load(AutoModelForSequenceClassification, name_or_path, key, num_labels=1, dtype=getattr(torch, DTYPES[dtype]))
    return ValueModel(model)
