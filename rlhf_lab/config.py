"""Config schemas of the engine's own groups, and the top-level run config.

Component groups (``task``, ``feedback``, ``reward``, ``algo``) get their schemas from the plugins
that register them (see :mod:`rlhf_lab.plugin_manager`); the run config types them ``Any``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING


@dataclass
class LoraSettings:
    """LoRA adapters through peft (rlhf_lab/models/lora.py): the base weights stay frozen."""

    r: int = 0
    """Adapter rank; 0: no adapters, every weight trains."""
    alpha: float = 16.0
    """Scaling numerator: the adapter's update is multiplied by alpha / r."""
    dropout: float = 0.0
    """Dropout on the adapters' input."""
    target_modules: Optional[list[str]] = None
    """Names of the layers that get adapters (e.g. [q_proj, v_proj]); null: peft's default for the architecture."""
    merge: bool = False
    """Also save the final policy with its adapters merged (<run dir>/policy_merged), which plain transformers loads."""

    def __post_init__(self) -> None:
        if self.r < 0 or self.alpha <= 0 or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.lora needs r >= 0, alpha > 0 and 0 <= dropout < 1; got r={self.r}, alpha={self.alpha}, dropout={self.dropout}")


@dataclass
class ModelConfig:
    """The starting policy (any Hugging Face causal LM)."""

    name_or_path: Optional[str] = None
    """Local directory or hub name for ``AutoModelForCausalLM``; null: the task builds a tiny model."""
    dtype: str = "float32"
    """Weights dtype on load: float32, bfloat16 or float16."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """LoRA for SFT, the policy, the critic and the reward model (r > 0); the reference is then the policy with its adapters off."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass of SFT, the policy and the critic: less memory, more compute."""

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
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0 or self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError(
                "sampling needs temperature >= 0, 0 < top_p <= 1, top_k >= 0, max_new_tokens >= 1 and batch_size >= 1; got "
                f"temperature={self.temperature}, top_p={self.top_p}, top_k={self.top_k}, max_new_tokens={self.max_new_tokens}, "
                f"batch_size={self.batch_size}"
            )


def check_step_limit(max_steps: Optional[int], key: str) -> None:
    """A stage's ``max_steps``: null, or at least one step."""
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"{key} must be >= 1 or null (no limit), got {max_steps}")


@dataclass
class SFTConfig:
    """Supervised fine-tuning on the task's demonstrations (loss on response tokens only)."""

    enabled: bool = True
    """false: no SFT; the given model (``model.name_or_path``) is the start policy and the reference,
    e.g. for a model that is already instruction-tuned or a policy from an earlier run."""
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
    max_steps: Optional[int] = None
    """Stop after this many gradient steps, or at the end of ``epochs``, whichever comes first (null:
    ``epochs`` alone). On real data an epoch can take hours: this bounds a run without shrinking the data."""
    disable_dropout: bool = True
    """Train with every dropout probability at 0. Current base models ship without dropout (Llama,
    Qwen2, Mistral: 0.0), and on a CPU a GPT-2's 0.1 makes every step 2-4x dearer (attention dropout
    takes scaled-dot-product attention off its fused kernel). false: the model's own dropout."""
    group_by_length: bool = True
    """Fill each batch with demonstrations of similar length (windows of 16 batches of the shuffled
    order sorted by length, the batches then shuffled): on real data it cuts the padding of a batch
    from about 40% to a few percent; every demonstration is still seen once an epoch. false: plain
    shuffled batches."""

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.epochs < 1 or self.batch_size < 1 or self.weight_decay < 0 or (self.max_examples is not None and self.max_examples < 1):
            raise ValueError(f"sft needs lr > 0, epochs >= 1, batch_size >= 1, weight_decay >= 0, max_examples >= 1 or null; got lr={self.lr}, epochs={self.epochs}, batch_size={self.batch_size}, weight_decay={self.weight_decay}, max_examples={self.max_examples}")
        check_step_limit(self.max_steps, "sft.max_steps")


@dataclass
class DataConfig:
    """Length limits of prompts and responses, checked before any training (rlhf_lab/lengths.py)."""

    max_prompt_tokens: Optional[int] = None
    """Prompt limit; null: the model's positions less the largest max_new_tokens of the run."""
    max_response_tokens: Optional[int] = None
    """Limit on demonstration and preference responses; null: the positions left after the prompt."""
    truncate: bool = False
    """false: an item over its limit stops the run before any training, naming where the longest one is;
    true: prompts are cut from the left (the end of a dialogue is kept), responses from the right,
    and every cut and dropped item is counted in the data/ metrics."""

    def __post_init__(self) -> None:
        for key in ("max_prompt_tokens", "max_response_tokens"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"data.{key} must be >= 1 or null, got {value}")


@dataclass
class TrainerConfig:
    """Arguments of every stage's Lightning ``Trainer``."""

    accelerator: str = "auto"
    """cpu, gpu, auto (a GPU where there is one), ..."""
    devices: Any = "auto"
    """Number or list of devices, or auto."""
    strategy: str = "auto"
    """Lightning strategy: auto, or with several devices ddp (one process per device, started by
    rank 0; batch sizes stay global), fsdp (the same, every model sharded over the devices: FSDP2) or
    deepspeed (the same, training state partitioned by DeepSpeed ZeRO at zero_stage)."""
    zero_stage: int = 2
    """With strategy=deepspeed, what ZeRO partitions over the processes: 1 the AdamW moments, 2 also
    the gradients, 3 also the weights (the frozen reference and reward model too)."""
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
        if self.zero_stage not in (1, 2, 3):
            raise ValueError(f"trainer.zero_stage must be 1, 2 or 3, got {self.zero_stage}")
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
class LoopConfig:
    """``loop.*``: iterated RLHF (rlhf_lab/run/loop.py)."""

    rounds: int = 1
    """Rounds of feedback -> reward model -> policy. Each round after the first samples candidates from the
    current policy, has them labelled, retrains the reward model on every label so far and optimises the
    policy again from where it is (DPO: on every record so far). Every round is evaluated."""

    def __post_init__(self) -> None:
        if not isinstance(self.rounds, int) or self.rounds < 1:
            raise ValueError(f"loop.rounds must be an integer >= 1, got {self.rounds}")


@dataclass
class EvalConfig:
    """Final evaluation on held-out prompts."""

    samples_per_prompt: int = 4
    """Responses sampled per held-out prompt from each policy."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """How evaluation samples. KL to the reference is estimated from these samples at temperature 1,
    so keep temperature 1 and no top-k/top-p for an unbiased KL."""
    preferences: bool = True
    """Score every policy on the run's held-out preference records (where it collects feedback): how often
    its implicit reward (log-ratio to its reference; SFT's to the starting model) and the reward model
    rank the preferred response first, and by what margin."""
    judge: Optional[str] = None
    """An AI judge that compares each policy's responses with SFT's, in both orders: a local causal-LM
    directory or hub name, a plugin's client 'package.module:factory', or 'feedback' (the run's own
    feedback=ai_judge, its template and constitution); null: none."""
    judge_batch_size: int = 16
    """Judge prompts per forward pass of a local judge model."""

    def __post_init__(self) -> None:
        if self.samples_per_prompt < 1:
            raise ValueError(f"eval.samples_per_prompt must be >= 1, got {self.samples_per_prompt}")
        if self.judge is not None and (not isinstance(self.judge, str) or not self.judge.strip()):
            raise ValueError(f"eval.judge must be a model directory, 'package.module:factory' or 'feedback', got {self.judge!r}")
        if self.judge_batch_size < 1:
            raise ValueError(f"eval.judge_batch_size must be >= 1, got {self.judge_batch_size}")


@dataclass
class RunConfig:
    """Top-level config: one experiment."""

    seed: int = 0
    """Seeds every stage (data splits, initialisation, sampling); two runs with one seed give the same figures."""
    cache_dir: str = "outputs/cache"
    """Content-addressed artifact cache shared by runs (SFT, feedback and reward-model stages)."""
    objective: Optional[str] = None
    """The figure the run returns to a sweeper (``hydra/sweeper=optuna`` maximises or minimises it): a key of
    metrics.json such as ``eval/dpo/win_rate``; null: ``eval/<algo>/gold_reward`` where the task has a gold
    reward, else ``eval/<algo>/proxy_reward``."""
    stop_after: Optional[str] = None
    """Build up to this artifact and stop, printing its path: sft, preferences or reward_model
    (null: the whole run, ending with policy optimisation and evaluation)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    task: Any = MISSING
    feedback: Any = MISSING
    reward: Any = MISSING
    algo: Any = MISSING


STOP_POINTS = ("sft", "preferences", "reward_model")

FIGURE_NAMESPACES = ("eval", "reward", "feedback", "sft", "data", "time", "task")
"""The first part of every key of metrics.json (``objective`` must name one)."""


def register_engine_schemas() -> None:
    """Store the engine's schemas in Hydra's ConfigStore (YAMLs under conf/ extend them)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(name="base_config", node=RunConfig)
    store.store(group="schema/logger", name="base", node=LoggerConfig)
    store.store(group="schema/trainer", name="base", node=TrainerConfig)


def check_known_keys(node: Any, key: str = "") -> None:
    """Every key of ``node`` must be a field of its schema, at every depth. Hydra lets ``+group.key=...``
    add a key that no schema has, and it would then be ignored without a word: refuse it, naming the
    key and the valid ones. Dict-typed fields (e.g. ``reward.kwargs``) take any key."""
    import dataclasses

    from omegaconf import DictConfig, OmegaConf

    from rlhf_lab.errors import RlhfLabError

    if not isinstance(node, DictConfig):
        return
    schema = OmegaConf.get_type(node)
    if not dataclasses.is_dataclass(schema):
        return
    fields = [f.name for f in dataclasses.fields(schema)]
    for name in node.keys():
        path = f"{key}.{name}" if key else str(name)
        if name not in fields:
            raise RlhfLabError(f"unknown config key '{path}': {schema.__name__} has {', '.join(fields)}")
        check_known_keys(node._get_node(name), path)


def check_finite_numbers(node: Any, key: str = "") -> None:
    """Every number in the config must be finite. ``nan`` passes every ``<``/``>`` bound check (all
    comparisons with it are false) and ``inf`` passes a lower bound, so both are refused here, once,
    for every group and every plugin's schema, naming the key."""
    import math

    from omegaconf import DictConfig, ListConfig, OmegaConf

    from rlhf_lab.errors import RlhfLabError

    if isinstance(node, (DictConfig, ListConfig)):
        node = OmegaConf.to_container(node, resolve=True)
    if isinstance(node, dict):
        for name, value in node.items():
            check_finite_numbers(value, f"{key}.{name}" if key else str(name))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            check_finite_numbers(value, f"{key}[{index}]")
    elif isinstance(node, float) and not math.isfinite(node):
        raise RlhfLabError(f"config '{key}' is {node}: every number must be finite")


def to_object(node: Any, key: str) -> Any:
    """Turn a config node into its dataclass, running ``__post_init__`` checks; errors name ``key``."""
    from omegaconf import OmegaConf

    from rlhf_lab.errors import RlhfLabError

    try:
        return OmegaConf.to_object(node)
    except ValueError as exc:
        raise RlhfLabError(f"bad value in config '{key}': {exc}") from None
