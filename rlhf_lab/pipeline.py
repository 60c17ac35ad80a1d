"""One experiment: base model -> SFT -> feedback -> reward model -> policy optimisation -> evaluation.

``run(cfg)`` lives apart from the ``@hydra.main`` wrapper so tests can compose a config and call it.
Upstream stages are cached (see :mod:`rlhf_lab.cache`); the policy stage and the evaluation are
written into the run directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from rlhf_lab.cache import ArtifactCache, artifact_key
from rlhf_lab.config import SamplingConfig, to_object
from rlhf_lab.errors import RlhfLabError
from rlhf_lab.plugin_manager import get_plugin_manager
from rlhf_lab.training import build_loggers, build_trainer, check_trainer_config, checkpoint_dir, close_loggers, inference_device

log = logging.getLogger(__name__)


def _plain(node) -> dict:
    return OmegaConf.to_container(node, resolve=True)


def _file_digests(config: dict) -> dict:
    """SHA-256 of every config value that names an existing file, so edited data invalidates the cache."""
    digests = {}
    for key, value in config.items():
        if isinstance(value, str) and Path(value).is_file():
            digests[key] = hashlib.sha256(Path(value).read_bytes()).hexdigest()
    return digests


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _hydra_dirs() -> tuple[Optional[Path], Optional[str]]:
    """(run directory, sweep-group name) when running under Hydra, else (None, None)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None, None
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    group = Path(hc.sweep.dir).name if hc.mode == RunMode.MULTIRUN else run_dir.name
    return run_dir, group


@contextmanager
def _timed(metrics: dict, stage: str):
    """Record the wall time of ``stage`` as ``time/<stage>_seconds`` (cached stages take ~0 s)."""
    start = time.perf_counter()
    yield
    metrics[f"time/{stage}_seconds"] = round(time.perf_counter() - start, 2)
    log.info("%s: %.1f s", stage, metrics[f"time/{stage}_seconds"])


class Pipeline:
    """The stages of one run, sharing the config, the registry, the cache and the run directory."""

    def __init__(self, cfg: DictConfig, run_dir: Path, group: str) -> None:
        self.cfg, self.run_dir, self.group = cfg, Path(run_dir), group
        self.registry = get_plugin_manager().registry
        self.cache = ArtifactCache(Path(cfg.cache_dir))
        # Components by name, each built from its validated dataclass config.
        self.task_cfg = self._component_cfg("task")
        self.feedback_cfg = self._component_cfg("feedback")
        self.reward_cfg = self._component_cfg("reward")
        self.algo_cfg = self._component_cfg("algo")
        self.model_cfg = to_object(cfg.model, "model")
        self.sft_cfg = to_object(cfg.sft, "sft")
        self.eval_cfg = to_object(cfg.eval, "eval")
        to_object(cfg.trainer, "trainer")
        check_trainer_config(cfg)
        to_object(cfg.logger, "logger")
        self.algo = self.registry.get("algo", self.algo_cfg.name)
        self.task = self.registry.get("task", self.task_cfg.name).factory(self.task_cfg, cfg.seed)
        # Built before any training so that their config errors stop the run before any work.
        self.needs_reward_model = bool(getattr(self.algo.factory, "requires_reward_model", False))
        self.feedback_source = self.objective = None
        if self.needs_reward_model:
            self.feedback_source = self.registry.get("feedback", self.feedback_cfg.name).factory(self.feedback_cfg, self.task)
            self.objective = self.registry.get("reward", self.reward_cfg.name).factory(self.reward_cfg)
        # Candidates for labelling are sampled the way the policy will sample.
        self.candidate_sampling = getattr(self.algo_cfg, "sampling", None) or SamplingConfig()
        self.tokenizer = None

    def _component_cfg(self, kind: str):
        node = self.cfg[kind]
        self.registry.get(kind, node.name)  # unknown name: lists what exists
        return to_object(node, kind)

    def _dist(self, kind: str) -> str:
        """The distribution (and version) providing the selected ``kind``: upgrading a plugin invalidates its artifacts."""
        return self.registry.get(kind, self.cfg[kind].name).distribution

    def _check_context_length(self, base: Path) -> None:
        """The longest prompt plus the longest response must fit the model's positions."""
        from transformers import AutoConfig

        from rlhf_lab.data import encode_prompt

        config = AutoConfig.from_pretrained(str(base))
        limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        if not limit:
            return
        longest = max(len(encode_prompt(self.tokenizer, p)) for p in self.task.train_prompts + self.task.eval_prompts)
        for key, sampling in (("algo.sampling", self.candidate_sampling), ("eval.sampling", self.eval_cfg.sampling)):
            if longest + sampling.max_new_tokens > limit:
                raise RlhfLabError(
                    f"{key}.max_new_tokens={sampling.max_new_tokens} plus the longest prompt ({longest} tokens) "
                    f"exceeds the model's {limit} positions"
                )

    # --- stages -------------------------------------------------------------------------------

    def base_model(self) -> tuple[Path, str]:
        """Directory of the starting model and tokenizer, and its cache key."""
        if self.model_cfg.name_or_path:
            from rlhf_lab.models.loading import model_fingerprint

            return Path(self.model_cfg.name_or_path), f"model:{model_fingerprint(self.model_cfg.name_or_path)}"
        if self.task.build_base_model is None:
            raise RlhfLabError(f"model.name_or_path is required: task '{self.task_cfg.name}' ships no model")
        key = artifact_key("base", {"task": _plain(self.cfg.task), "plugin": self._dist("task"), "seed": self.cfg.seed}, [])

        def build(out: Path) -> dict:
            self.task.build_base_model(out)
            return {}

        path, _ = self.cache.get_or_build("base", key, build)
        return path, key

    def sft(self, base: Path, base_key: str) -> tuple[Path, str, dict]:
        from lightning.pytorch import seed_everything

        from rlhf_lab.models.loading import load_policy
        from rlhf_lab.stages.sft import SFTModule, demonstration_loader, tokenize_demonstrations

        config = {
            "sft": _plain(self.cfg.sft), "task": _plain(self.cfg.task), "plugin": self._dist("task"),
            "dtype": self.model_cfg.dtype, "precision": self.cfg.trainer.precision, "seed": self.cfg.seed,
        }
        key = artifact_key("sft", config, [base_key])

        def build(out: Path) -> dict:
            seed_everything(self.cfg.seed, verbose=False)
            c = self.sft_cfg
            examples = self.task.sft_train[: c.max_examples] if c.max_examples else self.task.sft_train
            pad = self.tokenizer.pad_token_id
            train = demonstration_loader(tokenize_demonstrations(self.tokenizer, examples), pad, c.batch_size, True, self.cfg.seed)
            val = demonstration_loader(tokenize_demonstrations(self.tokenizer, self.task.sft_eval), pad, 128, False, self.cfg.seed)
            module = SFTModule(load_policy(str(base), self.model_cfg.dtype), c.lr, c.weight_decay, checkpoint_dir(self.run_dir, "sft"))
            trainer = build_trainer(self.cfg, "sft", self.run_dir, self.group, max_epochs=c.epochs)
            try:
                trainer.fit(module, train, val)
            finally:
                close_loggers(trainer.loggers)
            module.model.save_pretrained(out)
            self.tokenizer.save_pretrained(out)
            return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("sft/")}

        path, metrics = self.cache.get_or_build("sft", key, build)
        return path, key, metrics

    def feedback(self, sft: Path, sft_key: str, kind: str) -> tuple[Path, str, dict]:
        """Preference records for training and held-out accuracy: ``train.jsonl``, ``heldout.jsonl``."""
        from rlhf_lab.data import decode_response
        from rlhf_lab.feedback.records import write_jsonl
        from rlhf_lab.models.loading import load_policy
        from rlhf_lab.rollout import sample_responses

        from dataclasses import asdict

        source = self.feedback_source
        config = {
            "feedback": _plain(self.cfg.feedback),
            "files": _file_digests(_plain(self.cfg.feedback)),
            "sampling": asdict(self.candidate_sampling),
            "kind": kind,
            "plugin": self._dist("feedback"),
            "task": _plain(self.cfg.task),
            "seed": self.cfg.seed,
        }
        key = artifact_key("feedback", config, [sft_key])

        def build(out: Path) -> dict:
            counts = {}
            policy = load_policy(str(sft), self.model_cfg.dtype).to(inference_device(self.cfg)) if source.needs_candidates else None
            for split, prompts in (("train", self.task.train_prompts * getattr(source, "rounds", 1)), ("heldout", self.task.eval_prompts)):
                candidates: list[list[str]] = []
                # Independent draws for the two splits: held-out noise must not mirror training noise.
                seed = self.cfg.seed + (0 if split == "train" else 1)
                if policy is not None:
                    grouped = sample_responses(policy, self.tokenizer, prompts, self.candidate_sampling, samples_per_prompt=source.responses_per_prompt, seed=seed)
                    candidates = [[decode_response(self.tokenizer, r) for r in group] for group in grouped]
                records = source.collect(prompts if policy is not None else [], candidates, kind=kind, seed=seed, split=split)
                write_jsonl(records, out / f"{split}.jsonl")
                counts[f"feedback/{split}_records"] = len(records)
                counts[f"feedback/{split}_pairs"] = sum(len(r.preference_pairs()) for r in records)
            return counts

        path, metrics = self.cache.get_or_build("feedback", key, build)
        log.info("feedback: %s", metrics)
        return path, key, metrics

    def reward_model(self, feedback: Path, feedback_key: str, init: Path, init_key: str, objective) -> tuple[Path, dict]:
        from lightning.pytorch import seed_everything

        from rlhf_lab.feedback.records import read_jsonl
        from rlhf_lab.models.loading import load_value_model
        from rlhf_lab.models.value_model import RewardNormaliser
        from rlhf_lab.stages.reward import RewardModule, record_loader, score_texts

        config = {
            "reward": _plain(self.cfg.reward), "plugin": self._dist("reward"),
            "dtype": self.model_cfg.dtype, "precision": self.cfg.trainer.precision, "seed": self.cfg.seed,
        }
        key = artifact_key("reward", config, [feedback_key, init_key])

        def build(out: Path) -> dict:
            seed_everything(self.cfg.seed, verbose=False)
            c = self.reward_cfg
            train, heldout = read_jsonl(feedback / "train.jsonl"), read_jsonl(feedback / "heldout.jsonl")
            model = load_value_model(str(init), self.model_cfg.dtype)
            module = RewardModule(model, objective, c.lr, c.weight_decay, checkpoint_dir(self.run_dir, "reward"))
            trainer = build_trainer(self.cfg, "reward", self.run_dir, self.group, max_epochs=c.epochs)
            val = record_loader(heldout, objective, self.tokenizer, 64, False, self.cfg.seed)
            try:
                trainer.fit(module, record_loader(train, objective, self.tokenizer, c.batch_size, True, self.cfg.seed), val)
            finally:
                close_loggers(trainer.loggers)
            # Normalise on the SFT policy's samples: the training candidates are exactly those.
            prompts = [r.prompt for r in train for _ in r.responses]
            responses = [resp for r in train for resp in r.responses]
            normaliser = RewardNormaliser.fit(score_texts(model.to(inference_device(self.cfg)), self.tokenizer, prompts, responses))
            # Plain transformers pools at the last non-pad token: it needs the pad id in the config.
            model.model.config.pad_token_id = self.tokenizer.pad_token_id
            model.save_pretrained(out)
            self.tokenizer.save_pretrained(out)
            normaliser.save(out)
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("reward/")}
            metrics.update({"reward/normaliser_mean": normaliser.mean, "reward/normaliser_std": normaliser.std})
            return metrics

        path, metrics = self.cache.get_or_build("reward", key, build)
        return path, metrics

    def optimise(self, sft: Path, reward: Optional[Path]):
        from lightning.pytorch import seed_everything

        from rlhf_lab.algos.context import AlgoContext
        from rlhf_lab.models.value_model import RewardNormaliser

        seed_everything(self.cfg.seed, verbose=False)
        context = AlgoContext(
            policy_path=sft, reward_path=reward, normaliser=RewardNormaliser.load(reward) if reward else RewardNormaliser(),
            tokenizer=self.tokenizer, train_prompts=self.task.train_prompts, seed=self.cfg.seed,
            dtype=self.model_cfg.dtype, checkpoint_dir=checkpoint_dir(self.run_dir, "policy"),
        )
        module = self.algo.factory(self.algo_cfg, context)
        trainer = build_trainer(self.cfg, "policy", self.run_dir, self.group, max_epochs=1)
        try:
            trainer.fit(module)
        finally:
            close_loggers(trainer.loggers)
        # Into a fresh directory, then renamed: no stale shards of an earlier run mix in.
        out, tmp = self.run_dir / "policy", self.run_dir / ".policy.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        module.policy.save_pretrained(tmp)
        self.tokenizer.save_pretrained(tmp)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
        return module, trainer

    # --- the whole run ------------------------------------------------------------------------

    def run(self) -> dict:
        from rlhf_lab.models.loading import load_policy, load_tokenizer, load_value_model
        from rlhf_lab.models.value_model import RewardNormaliser
        from rlhf_lab.stages.evaluate import evaluate_policies

        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.cfg.logger.name == "wandb":
            log.info("wandb group: %s", self.group)
        started = time.perf_counter()
        timings: dict = {}
        with _timed(timings, "base"):
            base, base_key = self.base_model()
            self.tokenizer = load_tokenizer(str(base))
            self._check_context_length(base)
        with _timed(timings, "sft"):
            sft, sft_key, metrics = self.sft(base, base_key)
        metrics = dict(metrics)

        reward = None
        if self.needs_reward_model:
            objective = self.objective
            with _timed(timings, "feedback"):
                feedback, feedback_key, feedback_metrics = self.feedback(sft, sft_key, objective.feedback_kind)
            metrics.update(feedback_metrics)
            init, init_key = (sft, sft_key) if self.reward_cfg.init_from_sft else (base, base_key)
            with _timed(timings, "reward"):
                reward, reward_metrics = self.reward_model(feedback, feedback_key, init, init_key, objective)
            metrics.update(reward_metrics)

        with _timed(timings, "policy"):
            module, trainer = self.optimise(sft, reward)
        algo_name = self.algo_cfg.name
        # Lightning hands the module back on the CPU after fit; evaluate where the trainer ran.
        device = trainer.strategy.root_device
        module.policy.to(device)
        reference = load_policy(str(sft), self.model_cfg.dtype).to(device)
        reward_model = load_value_model(str(reward), self.model_cfg.dtype, key=f"reward model {reward}").to(device) if reward else None
        normaliser = RewardNormaliser.load(reward) if reward else RewardNormaliser()
        eval_start = time.perf_counter()
        eval_metrics, samples = evaluate_policies(
            {"sft": reference, algo_name: module.policy}, reference, reward_model, normaliser,
            self.tokenizer, self.task, self.eval_cfg, self.cfg.seed,
        )
        metrics.update(eval_metrics)
        timings["time/evaluate_seconds"] = round(time.perf_counter() - eval_start, 2)
        timings["time/total_seconds"] = round(time.perf_counter() - started, 2)
        metrics.update(timings)
        # The evaluation is a stage of its own for the loggers (csv/eval, a wandb run of job type eval).
        eval_loggers = build_loggers(self.cfg, "eval", self.run_dir, self.group)
        for logger in eval_loggers:
            logger.log_metrics(eval_metrics, step=0)
        close_loggers(eval_loggers)

        _write_atomic(self.run_dir / "samples.jsonl", "".join(json.dumps(sample) + "\n" for sample in samples))
        _write_atomic(self.run_dir / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        get_plugin_manager().hook.rlhf_lab_run_finished(cfg=self.cfg, metrics=metrics, run_dir=self.run_dir)
        return metrics


def run(cfg: DictConfig, run_dir: Optional[Path] = None) -> dict:
    """Run one experiment and return its metrics (also written to ``<run_dir>/metrics.json``)."""
    hydra_dir, group = _hydra_dirs()
    run_dir = Path(run_dir or hydra_dir or "outputs/run")
    group = cfg.logger.group or group or run_dir.name
    return Pipeline(cfg, run_dir, group).run()
