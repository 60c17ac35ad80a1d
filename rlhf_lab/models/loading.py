"""Load policies, tokenizers and scalar-head models through ``from_pretrained``."""

from __future__ import annotations

from pathlib import Path

from rlhf_lab.errors import RlhfLabError

def resolve_model_path(name_or_path: str, key: str) -> str:
    """A local directory, or a hub name unchanged; a path that is no directory fails here, naming ``key``."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists():
        raise RlhfLabError(f"{key}: '{name_or_path}' is a file, not a model directory")
    if name_or_path.startswith(("/", "./", "../", "~")):
        raise RlhfLabError(f"{key}: model directory '{name_or_path}' does not exist")
    return name_or_path


def model_fingerprint(name_or_path: str) -> str:
    """Identity of a model for cache keys: a local directory's absolute path and its files' sizes and
    modification times (no weights are read), or a hub name as given."""
    import hashlib

    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        return f"hub:{name_or_path}"
    files = sorted(p for p in path.rglob("*") if p.is_file())
    listing = [(str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return f"dir:{path.resolve()}:" + hashlib.sha256(repr(listing).encode()).hexdigest()[:16]


def _load(loader, name_or_path: str, key: str, **kwargs):
    try:
        return loader.from_pretrained(resolve_model_path(name_or_path, key), **kwargs)
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

    return fuse_activations(_load(AutoModelForCausalLM, name_or_path, key, dtype=getattr(torch, dtype)))


def load_value_model(name_or_path: str, dtype: str = "float32", key: str = "model.name_or_path"):
    """A :class:`~rlhf_lab.models.value_model.ValueModel` from a causal-LM or sequence-classification dir."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from rlhf_lab.models.value_model import ValueModel

    model = _load(AutoModelForSequenceClassification, name_or_path, key, num_labels=1, dtype=getattr(torch, dtype))
    return ValueModel(fuse_activations(model))


def fuse_activations(model):
    """Replace the tanh-approximated GELU written out in Python (``gelu_new``, ``gelu_fast``: GPT-2 and
    kin) with torch's one-kernel ``gelu(approximate="tanh")``, in place; returns ``model``.

    The same formula, so the same function up to float rounding (about 1e-7), but one kernel instead
    of eight in the forward and far fewer in the backward: on a small model the activation is a
    large share of each step. The saved config is untouched (it still names ``gelu_new``), so a saved
    model loads elsewhere as before. transformers' own ``gelu_pytorch_tanh`` is this module.
    """
    from transformers import activations

    fused = getattr(activations, "GELUTanh", None) or activations.PytorchGELUTanh  # (its name before transformers 5.x)
    written_out = (activations.NewGELUActivation, activations.FastGELUActivation)

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) in written_out:
                setattr(parent, name, fused())
    return model


def disable_dropout(model) -> None:
    """Set every dropout probability to 0: with dropout, the log-probs an update computes would differ
    from those of the policy that sampled (Huang et al. 2024, detail 4) and from the reference's
    (TRL's DPO disables it for the same reason)."""
    from torch import nn

    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
