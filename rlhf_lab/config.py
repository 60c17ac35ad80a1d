"""Config schemas of the engine's own groups, and the top-level run config.

Component groups (``task``, ``feedback``, ``reward``, ``algo``) get their schemas from the plugins
that register them (see :mod:`rlhf_lab.plugin_manager`); the run config types them ``Any``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING


@dataclass
class ModelConfig:
    """The starting policy (any Hugging Face causal LM)."""

    name_or_path: Optional[str] = None
    """Local directory or hub name for ``AutoModelForCausalLM``; null: the task builds a tiny model."""
    dtype: str = "float32"
    """Weights dtype on load: float32, bfloat16 or float16."""

    def __post_init__(self) -> None:
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"model.dtype must be float32, bfloat16 or float16, got '{self.dtype}'")


@dataclass
class SamplingConfig:
    """How responses are sampled from a policy."""

    temperature: float = 1.0
    """Softmax temperature; 0 means greedy. On-policy algorithms also scale log-probs by it (Huang et al. 2024)."""
    top_k: int = 0
    """Keep only the k most likely tokens (0: off)."""
    top_p: float = 1.0
    """Nucleus sampling mass (1.0: off)."""
    max_new_tokens: int = 20
    """Responses longer than this are cut and count as having no EOS."""
    batch_size: int = 64
    """Sequences per generation batch (prompts x samples per prompt) outside on-policy rollouts,
    which sample their whole rollout batch at once."""

    def __post_init__(self) -> None:
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0 or self.max_new_tokens < 1:
            raise ValueError(
                "sampling needs temperature >= 0, 0 < top_p <= 1, top_k >= 0 and max_new_tokens >= 1; got "
                f"temperature={self.temperature}, top_p={self.top_p}, top_k={self.top_k}, max_new_tokens={self.max_new_tokens}"
            )


@dataclass
class SFTConfig:
    """Supervised fine-tuning on the task's demonstrations (loss on response tokens only)."""

    lr: float = 1e-3
    """AdamW learning rate."""
    epochs: int = 8
    """Passes over the demonstrations."""
    batch_size: int = 64
    """Demonstrations per gradient step."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_examples: Optional[int] = None
    """Use at most this many demonstrations (null: all)."""

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.epochs < 1 or self.batch_size < 1 or (self.max_examples is not None and self.max_examples < 1):
            raise ValueError(f"sft needs lr > 0, epochs >= 1, batch_size >= 1, max_examples >= 1 or null; got lr={self.lr}, epochs={self.epochs}, batch_size={self.batch_size}, max_examples={self.max_examples}")


@dataclass
class TrainerConfig:
    """Arguments of every stage's Lightning ``Trainer``."""

    accelerator: str = "auto"
    """cpu, gpu, auto (a GPU where there is one), ..."""
    devices: Any = "auto"
    """Number or list of devices, or auto."""
    strategy: str = "auto"
    """Lightning strategy: auto, ddp, fsdp, deepspeed, ..."""
    precision: str = "32-true"
    """Lightning precision, e.g. 32-true, bf16-mixed (GPU)."""
    log_every_n_steps: int = 1
    """How often training metrics go to the logger (every step: an on-policy step is a whole iteration)."""
    progress_bar: str = "rich"
    """rich, tqdm or none."""
    checkpoint_every_n_steps: int = 20
    """Save ``last.ckpt`` in <run dir>/checkpoints/<stage> every this many training steps (batches;
    for on-policy algorithms, rollout iterations), and at the end of every epoch."""

    def __post_init__(self) -> None:
        if self.progress_bar not in ("rich", "tqdm", "none"):
            raise ValueError(f"trainer.progress_bar must be rich, tqdm or none, got '{self.progress_bar}'")
        if self.log_every_n_steps < 1 or self.checkpoint_every_n_steps < 1:
            raise ValueError(
                f"trainer.log_every_n_steps and trainer.checkpoint_every_n_steps must be >= 1, got {self.log_every_n_steps} and {self.checkpoint_every_n_steps}"
            )


@dataclass
class LoggerConfig:
    """Where metrics go besides metrics.json: wandb (default), csv or tensorboard."""

    name: str = "wandb"
    project: str = "rlhf_lab"
    """wandb project."""
    mode: Optional[str] = None
    """wandb mode: online, offline or disabled; null: offline unless WANDB_MODE or an API key is set."""
    group: Optional[str] = None
    """wandb group; null: the sweep directory's name in a multirun, the run directory's name otherwise."""

    def __post_init__(self) -> None:
        if self.name not in ("wandb", "csv", "tensorboard"):
            raise ValueError(f"logger.name must be wandb, csv or tensorboard, got '{self.name}'")
        if self.mode not in (None, "online", "offline", "disabled"):
            raise ValueError(f"logger.mode must be online, offline, disabled or null, got '{self.mode}'")


@dataclass
class EvalConfig:
    """Final evaluation on held-out prompts."""

    samples_per_prompt: int = 4
    """Responses sampled per held-out prompt from each policy."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """How evaluation samples. KL to the reference is estimated from these samples at temperature 1,
    so keep temperature 1 and no top-k/top-p for an unbiased KL."""

    def __post_init__(self) -> None:
        if self.samples_per_prompt < 1:
            raise ValueError(f"eval.samples_per_prompt must be >= 1, got {self.samples_per_prompt}")


@dataclass
class RunConfig:
    """Top-level config: one experiment."""

    seed: int = 0
    cache_dir: str = "outputs/cache"
    """Content-addressed artifact cache shared by runs (SFT, feedback and reward-model stages)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    task: Any = MISSING
    feedback: Any = MISSING
    reward: Any = MISSING
    algo: Any = MISSING


def register_engine_schemas() -> None:
    """Store the engine's schemas in Hydra's ConfigStore (YAMLs under conf/ extend them)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(name="base_config", node=RunConfig)
    store.store(group="schema/logger", name="base", node=LoggerConfig)
    store.store(group="schema/trainer", name="base", node=TrainerConfig)


def to_object(node: Any, key: str) -> Any:
    """Turn a config node into its dataclass, running ``__post_init__`` checks; errors name ``key``."""
    from omegaconf import OmegaConf

    from rlhf_lab.errors import RlhfLabError

    try:
        return OmegaConf.to_object(node)
    except ValueError as exc:
        raise RlhfLabError(f"bad value in config '{key}': {exc}") from None
