"""``feedback=ai_judge``: AI feedback from a language model and a constitution (RLAIF).

``mode: compare`` (Bai et al. 2022, Constitutional AI, RL phase; Lee et al. 2023, RLAIF): for each pair
of candidates the judge reads a prompt built from ``template`` (the principles, the user prompt, the two
responses) and the preference is read off its next-token probabilities of the two labels (" A", " B"),
renormalised over those two. (Labels of several tokens are scored whole.) The pair is asked in both orders and the two answers averaged:

    P(i better) = ( P(A | i shown first) + P(B | j shown first) ) / 2

so a judge that favours whichever response comes first gains nothing from it; the mean of
``P(A)`` over both orders minus 1/2 is reported as ``feedback/judge_position_bias``. K > 2 candidates
are ranked by the sum of their pairwise probabilities.

``mode: critique_revise`` (Constitutional AI, supervised phase): the judge critiques each candidate
against a principle drawn from the constitution, then rewrites it; the revision is recorded as
preferred over the original.

The judge is any local Hugging Face causal LM (``model``), or a plugin's client (``client:
"package.module:factory"``; ``factory(cfg)`` returns an object with ``label_probabilities(texts,
labels)`` and ``generate(texts, max_new_tokens)``, the two methods of :class:`LocalJudge`).
"""

from __future__ import annotations

import logging
import random
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from rlhf_lab.feedback.selection_config import SelectionConfig
from rlhf_lab import hookimpl
from rlhf_lab.errors import RlhfLabError
from rlhf_lab.feedback.judges import CLIENT_SPEC, LocalJudge, load_client
from rlhf_lab.records import PreferenceRecord

log = logging.getLogger("rlhf_lab")

DEFAULT_PRINCIPLES = [
    "Choose the response that answers the request most directly and stays on its topic.",
    "Choose the response that is more helpful, honest and harmless.",
    "Choose the response that is clearer and better written, without needless length.",
]

DEFAULT_TEMPLATE = (
    "Principles:\n{principles}\n\nRequest: {prompt}\n\nResponse A: {response_a}\n\nResponse B: {response_b}\n\n"
    "Following the principles, which response is better? Answer A or B.\nAnswer:"
)
DEFAULT_CRITIQUE_TEMPLATE = "Request: {prompt}\nResponse: {response}\nCritique the response by this principle: {principle}\nCritique:"
DEFAULT_REVISION_TEMPLATE = (
    "Request: {prompt}\nResponse: {response}\nCritique: {critique}\nRewrite the response so that it follows: {principle}\nRevision:"
)

TEMPLATE_FIELDS = {
    "template": ({"prompt", "response_a", "response_b"}, {"principles"}),
    "critique_template": ({"prompt", "response", "principle"}, set()),
    "revision_template": ({"prompt", "response", "critique", "principle"}, set()),
}


@dataclass
class AIJudgeConfig(SelectionConfig):
    """Schema of ``feedback=ai_judge``."""

    name: str = "ai_judge"
    model: Optional[str] = None
    """The judge: a local causal-LM directory or hub name (or set ``client``)."""
    client: Optional[str] = None
    """A plugin's judge client instead of a local model: 'package.module:factory', called with this config."""
    mode: str = "compare"
    """'compare': preferences from the judge's label probabilities, both orders; 'critique_revise': revisions preferred over originals."""
    principles: list[str] = field(default_factory=lambda: list(DEFAULT_PRINCIPLES))
    """The constitution, one principle per item."""
    principles_file: Optional[str] = None
    """A text file with one principle per line (lines starting with # are comments); replaces ``principles``."""
    template: str = DEFAULT_TEMPLATE
    """Judge prompt of compare mode; fields {principles}, {prompt}, {response_a}, {response_b}."""
    labels: list[str] = field(default_factory=lambda: [" A", " B"])
    """The two answers whose next-token probabilities give the preference (their first tokens must differ)."""
    critique_template: str = DEFAULT_CRITIQUE_TEMPLATE
    """Critique prompt of critique_revise mode; fields {prompt}, {response}, {principle}."""
    revision_template: str = DEFAULT_REVISION_TEMPLATE
    """Revision prompt; fields {prompt}, {response}, {critique}, {principle}."""
    max_new_tokens: int = 64
    """Longest critique or revision (greedy decoding)."""
    responses_per_prompt: int = 2
    """Candidates per prompt in compare mode (critique_revise revises one)."""
    rounds: int = 1
    """Times each training prompt is sent for judging (fresh candidates each time)."""
    tie_margin: float = 0.0
    """In compare mode, a pair with |P(i better) - 1/2| <= this is a tie and gives no record (K = 2)."""
    batch_size: int = 16
    """Judge prompts per forward pass."""
    dtype: str = "float32"
    """Dtype of a local judge model."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in ("compare", "critique_revise"):
            raise ValueError(f"mode must be 'compare' or 'critique_revise', got '{self.mode}'")
        if self.mode == "critique_revise" and self.selection != "random":
            raise ValueError("feedback.selection chooses among compared candidates: critique_revise mode revises every one (set mode=compare)")
        if (self.model is None) == (self.client is None):
            raise ValueError("give exactly one of model (a local causal LM or hub name) and client ('package.module:factory')")
        if self.responses_per_prompt < 2 or self.rounds < 1 or self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError("responses_per_prompt >= 2, rounds >= 1, batch_size >= 1 and max_new_tokens >= 1 are needed")
        if not 0 <= self.tie_margin < 0.5:
            raise ValueError(f"tie_margin must be in [0, 0.5), got {self.tie_margin}")
        if len(self.labels) != 2 or len(set(self.labels)) != 2 or not all(self.labels):
            raise ValueError(f"labels must be two different non-empty strings, got {self.labels}")
        for name, (needed, optional) in TEMPLATE_FIELDS.items():
            used = {f for _, f, _, _ in string.Formatter().parse(getattr(self, name)) if f is not None}
            if not needed <= used or used - needed - optional:
                raise ValueError(
                    f"{name} must use the fields {sorted(needed)}{' (and optionally ' + str(sorted(optional)) + ')' if optional else ''}; "
                    f"it uses {sorted(used)}"
                )
        if not self.principles and self.principles_file is None:
            raise ValueError("the constitution is empty: give principles or principles_file")


def read_principles(path: str) -> list[str]:
    """One principle per non-empty line; ``#`` starts a comment line."""
    file = Path(path)
    if not file.is_file():
        raise RlhfLabError(f"feedback.principles_file: {path} not found")
    principles = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not principles:
        raise RlhfLabError(f"feedback.principles_file: {path} holds no principle")
    return principles


def pair_preferences(judge, cfg: AIJudgeConfig, principles: str, prompt_pairs: list[tuple[str, str, str]]) -> tuple[list[float], list[float]]:
    """P(first better) of each (prompt, first, second), asked in both orders, and the mean P(label A).

    :returns: ``(p_first_better, p_label_a)`` per pair, where ``p_label_a`` is the judge's average
        probability of answering A over the two orders (1/2 for a judge without position bias).
    """
    texts = []
    for prompt, first, second in prompt_pairs:
        texts.append(cfg.template.format(principles=principles, prompt=prompt, response_a=first, response_b=second))
        texts.append(cfg.template.format(principles=principles, prompt=prompt, response_a=second, response_b=first))
    probabilities = judge.label_probabilities(texts, list(cfg.labels)) if texts else []
    better, label_a = [], []
    for k in range(len(prompt_pairs)):
        forward, swapped = probabilities[2 * k], probabilities[2 * k + 1]
        better.append((forward[0] + swapped[1]) / 2)
        label_a.append((forward[0] + swapped[0]) / 2)
    return better, label_a


class AIJudgeFeedback:
    """Preferences (or revisions) from an AI judge and a constitution."""

    needs_candidates = True

    def __init__(self, cfg: AIJudgeConfig, task) -> None:
        self.cfg = cfg
        self.principles = read_principles(cfg.principles_file) if cfg.principles_file else list(cfg.principles)
        self.responses_per_prompt = cfg.responses_per_prompt if cfg.mode == "compare" else 1
        self.rounds = cfg.rounds
        self.stats: dict[str, float] = {}
        self._judge = None
        # Before any work: a client that does not import, or a judge directory that does not exist,
        # is named now rather than after SFT and sampling.
        if cfg.client:
            self._judge = load_client(cfg.client, cfg)
        else:
            from rlhf_lab.models.loading import resolve_model_path

            resolve_model_path(cfg.model, "feedback.model")

    @property
    def judge(self):
        if self._judge is None:
            self._judge = load_client(self.cfg.client, self.cfg) if self.cfg.client else LocalJudge(self.cfg.model, self.cfg.dtype, self.cfg.batch_size)
        return self._judge

    def collect(self, prompts: list[str], candidates: list[list[str]], kind: str, seed: int, split: str = "train") -> list[PreferenceRecord]:
        if kind != "ranking":
            raise RlhfLabError("feedback=ai_judge gives preferences (rankings); a pointwise reward model needs ratings")
        if self.cfg.mode == "critique_revise":
            return self._revise(prompts, candidates, seed, split)
        return self._compare(prompts, candidates, split)

    def _compare(self, prompts: list[str], candidates: list[list[str]], split: str) -> list[PreferenceRecord]:
        constitution = "\n".join(f"- {p}" for p in self.principles)
        pairs, owners = [], []
        for n, (prompt, responses) in enumerate(zip(prompts, candidates)):
            for i in range(len(responses)):
                for j in range(i + 1, len(responses)):
                    pairs.append((prompt, responses[i], responses[j]))
                    owners.append((n, i, j))
        better, label_a = pair_preferences(self.judge, self.cfg, constitution, pairs)
        wins: dict[int, list[float]] = {}
        pair_p: dict[int, dict] = {}
        for (n, i, j), p in zip(owners, better):
            k = len(candidates[n])
            wins.setdefault(n, [0.0] * k)
            wins[n][i] += p
            wins[n][j] += 1.0 - p
            pair_p.setdefault(n, {})[f"{i}>{j}"] = round(p, 6)
        records, ties = [], 0
        for n, (prompt, responses) in enumerate(zip(prompts, candidates)):
            if len(responses) == 2 and abs(pair_p[n]["0>1"] - 0.5) <= self.cfg.tie_margin:
                ties += 1
                continue
            ranking = sorted(range(len(responses)), key=lambda r: (-wins[n][r], r))
            records.append(PreferenceRecord(prompt=prompt, responses=list(responses), ranking=ranking, annotator="ai_judge",
                                            meta={"p_better": pair_p[n]}))
        self.stats[f"feedback/{split}_judge_ties"] = ties
        if label_a:
            self.stats[f"feedback/{split}_judge_position_bias"] = sum(label_a) / len(label_a) - 0.5
        return records

    def _revise(self, prompts: list[str], candidates: list[list[str]], seed: int, split: str) -> list[PreferenceRecord]:
        rng = random.Random(seed)
        jobs = [(prompt, response, rng.choice(self.principles)) for prompt, responses in zip(prompts, candidates) for response in responses]
        critiques = self.judge.generate(
            [self.cfg.critique_template.format(prompt=p, response=r, principle=c) for p, r, c in jobs], self.cfg.max_new_tokens
        )
        revisions = self.judge.generate(
            [self.cfg.revision_template.format(prompt=p, response=r, critique=k, principle=c) for (p, r, c), k in zip(jobs, critiques)],
            self.cfg.max_new_tokens,
        )
        records, unchanged = [], 0
        for (prompt, response, principle), critique, revision in zip(jobs, critiques, revisions):
            if not revision.strip() or revision.strip() == response.strip():
                unchanged += 1
                continue
            records.append(PreferenceRecord(prompt=prompt, responses=[revision, response], ranking=[0, 1], annotator="ai_judge:revision",
                                            meta={"principle": principle, "critique": critique}))
        self.stats[f"feedback/{split}_unrevised"] = unchanged
        if not records:
            raise RlhfLabError(f"feedback=ai_judge (critique_revise): the judge revised none of the {len(jobs)} {split} responses")
        return records


class PairJudge:
    """An AI judge as evaluation uses it: for (prompt, first, second) triples, P(first is better), asked
    in both orders (:func:`pair_preferences`), and the mean P(label A) over both orders.

    Built by :func:`evaluation_judge` before any work, so a judge that cannot load is named first.
    """

    def __init__(self, cfg: AIJudgeConfig, principles: list[str], load) -> None:
        self.cfg, self._load, self._judge = cfg, load, None
        self.constitution = "\n".join(f"- {p}" for p in principles)

    @property
    def judge(self):
        """The client or local model, loaded on first use (a local model only when evaluation needs it)."""
        if self._judge is None:
            self._judge = self._load()
        return self._judge

    def __call__(self, triples: list[tuple[str, str, str]]) -> tuple[list[float], list[float]]:
        return pair_preferences(self.judge, self.cfg, self.constitution, triples)


def evaluation_judge(spec: str, feedback, batch_size: int = 16) -> PairJudge:
    """The judge ``eval.judge`` names: 'feedback' (the run's feedback=ai_judge in compare mode, with its
    template, labels and constitution), a plugin's client 'package.module:factory', or a local causal-LM
    directory or hub name (the default template and constitution).

    :raises RlhfLabError: naming ``eval.judge`` when the judge cannot be found or loaded.
    """
    if spec == "feedback":
        if not isinstance(feedback, AIJudgeFeedback) or feedback.cfg.mode != "compare":
            raise RlhfLabError("eval.judge=feedback reuses the run's AI judge, but the run's feedback is not feedback=ai_judge "
                               "in compare mode; give eval.judge a model directory or 'package.module:factory' instead")
        return PairJudge(feedback.cfg, feedback.principles, lambda: feedback.judge)
    if CLIENT_SPEC.fullmatch(spec) and not Path(spec).exists():
        cfg = AIJudgeConfig(client=spec, batch_size=batch_size)
        client = load_client(spec, cfg, key="eval.judge")
        return PairJudge(cfg, cfg.principles, lambda: client)
    from rlhf_lab.models.loading import resolve_model_path

    resolve_model_path(spec, "eval.judge")
    cfg = AIJudgeConfig(model=spec, batch_size=batch_size)
    return PairJudge(cfg, cfg.principles, lambda: LocalJudge(spec, cfg.dtype, cfg.batch_size, key="eval.judge"))


@hookimpl
def rlhf_lab_register_feedback_sources(register):
    register("ai_judge", AIJudgeFeedback, AIJudgeConfig)
