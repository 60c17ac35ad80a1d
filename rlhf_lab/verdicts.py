"""Plain sentences on what a run achieved, each judged against its noise (:mod:`rlhf_lab.stats`).

A run on a task with a gold utility is judged by gold reward. Without one (users' own data), a run is
judged by what it can measure honestly: how often each policy's implicit reward orders held-out
preference pairs, how accurate the reward model is on the same pairs, and who wins against SFT by the
reward model and by an AI judge, raw and with length taken out.
"""

from __future__ import annotations

from rlhf_lab.stats import beyond_noise

STILL_KL = 0.01
"""A policy whose KL to its reference (nats per response) is under this did not move: a verdict says so
first, whatever the other figures (their differences are then noise around zero)."""


def verdict_lines(metrics: dict, algo: str, baseline: str = "sft") -> list[str]:
    """Plain sentences on what a run achieved against its baseline, with noise taken into account.

    Reads the paired differences ``eval/<algo>/<figure>_diff`` and ``eval/<algo>/<figure>_diff_se``
    for ``gold_reward``, ``proxy_reward`` and ``response_length`` (candidate minus baseline), the
    win rates (``win_rate``, ``proxy_win_rate``, ``judge_win_rate``, each raw and ``lc_``, with ``_low`` /
    ``_high``), the held-out preference accuracies ``eval/<name>/pref_accuracy`` (with ``_se``) of the
    policy, the baseline and ``reward_model``, the mean response lengths, and the KL to the reference
    ``eval/<algo>/kl`` (under :data:`STILL_KL`: the policy did not move). A figure whose noise is
    missing is not judged.

    :param metrics: a run's flat ``metrics.json`` dict.
    :param algo: the optimised policy's name, as in the metric names.
    :param baseline: the baseline policy's name.
    :returns: one sentence per finding.
    """
    gold = _difference(metrics, algo, "gold_reward")
    proxy = _difference(metrics, algo, "proxy_reward")
    lines = []
    if gold is not None:
        lines.append(_gold_line(metrics, algo, baseline, *gold))
        if proxy is not None and proxy[0] > 0 and beyond_noise(*proxy):
            proxy_text = f"Proxy reward rose by {_pm(*proxy)}"
            if gold[0] < 0 and beyond_noise(*gold):
                lines.append(f"{proxy_text} while gold reward fell: the policy is exploiting the reward model (over-optimisation).")
            elif not beyond_noise(*gold):
                lines.append(f"{proxy_text} but gold reward did not move beyond noise: the reward model's gain did not transfer to gold reward.")
    else:
        lines += _without_gold(metrics, algo, baseline, proxy)
    kl = metrics.get(f"eval/{algo}/kl")
    if kl is not None and abs(kl) < STILL_KL and algo != baseline:
        lines.insert(0, f"{algo}'s policy barely moved from {baseline}'s (KL {kl:.4f} nats per response, under {STILL_KL}): "
                        "the run changed nothing it could measure. Give it more to do: a higher algo.lr (LoRA adapters "
                        "usually need about ten times full fine-tuning's), more steps or epochs, or a smaller KL weight "
                        "(algo.beta for the DPO family, algo.kl_coef otherwise).")
    length_line = _length_line(metrics, algo, baseline)
    if length_line:
        lines.append(length_line)
    return lines


def _without_gold(metrics: dict, algo: str, baseline: str, proxy) -> list[str]:
    """The findings of a run whose task has no gold utility: held-out preferences, reward model, win rates."""
    lines = []
    preference = _preference_line(metrics, algo, baseline)
    if preference:
        lines.append(preference)
    reward_model = _value(metrics, "reward_model", "pref_accuracy")
    if reward_model is not None and not beyond_noise(reward_model[0] - 0.5, reward_model[1]):
        lines.append(f"The reward model orders held-out pairs no better than chance ({_se(*reward_model)}): what the policy "
                     "optimised says little about these preferences.")
    for prefix, judge in (("proxy_", "the reward model"), ("judge_", "the AI judge (both orders)")):
        line = _win_line(metrics, algo, baseline, prefix, judge)
        if line:
            lines.append(line)
    if proxy is not None and f"eval/{algo}/proxy_win_rate" not in metrics:
        judged = "beyond" if beyond_noise(*proxy) else "within"
        lines.append(f"{algo} changed proxy reward by {_pm(*proxy)} ({judged} noise).")
    if not lines:
        lines.append(f"No gold, proxy, preference or judge figure was recorded for {algo}, so there is nothing to judge.")
    return lines


def _preference_line(metrics: dict, algo: str, baseline: str) -> str | None:
    accuracy = _value(metrics, algo, "pref_accuracy")
    if accuracy is None:
        return None
    pairs = metrics.get("eval/heldout_preference_pairs")
    on = f"{pairs} held-out preference pairs" if pairs is not None else "the held-out preference pairs"
    if beyond_noise(accuracy[0] - 0.5, accuracy[1]):
        judged = "better than chance" if accuracy[0] > 0.5 else "worse than chance"
    else:
        judged = "within noise of chance (0.5)"
    line = f"On {on}, {algo}'s implicit reward (log-ratio to {baseline}) ranks the preferred response first in {_se(*accuracy)} of them: {judged}"
    base = _value(metrics, baseline, "pref_accuracy")
    difference = _difference(metrics, algo, "pref_accuracy")
    if base is not None:
        line += f"; {baseline}'s, against the starting model, in {_se(*base)}"
        if difference is not None and beyond_noise(*difference):
            line += f" ({algo} {'ahead' if difference[0] > 0 else 'behind'}, beyond noise: Δ = {_pm(*difference)})"
        elif difference is not None:
            line += f" ({algo} within noise of it: Δ = {_pm(*difference)})"
    return line + "."


def _win_line(metrics: dict, algo: str, baseline: str, prefix: str, judge: str) -> str | None:
    raw = _interval(metrics, algo, f"{prefix}win_rate")
    if raw is None:
        return None
    line = f"By {judge}, {algo}'s responses beat {baseline}'s in {_rate(*raw)} of prompts ({_against_half(*raw)})"
    controlled = _interval(metrics, algo, f"{prefix}lc_win_rate")
    if controlled is not None:
        line += f"; with length taken out, {_rate(*controlled)} ({_against_half(*controlled)})"
        if _decided(*raw) and not _decided(*controlled):
            line += ": the preference comes from response length"
    return line + "."


def _length_line(metrics: dict, algo: str, baseline: str) -> str | None:
    length = _difference(metrics, algo, "response_length")
    candidate_length = metrics.get(f"eval/{algo}/response_length")
    baseline_length = metrics.get(f"eval/{baseline}/response_length")
    if length is None or not beyond_noise(*length) or not candidate_length or not baseline_length:
        return None
    ratio = candidate_length / baseline_length
    if ratio <= 1.2:
        return None
    return (f"Responses are {ratio:.2f}× longer than {baseline}'s (Δ = {_pm(*length, digits=2)} tokens): "
            "part of any reward gain may come from length alone.")


def _gold_line(metrics: dict, algo: str, baseline: str, delta: float, se: float) -> str:
    if not beyond_noise(delta, se):
        return f"{algo}'s gold reward is within noise of {baseline}'s (Δ = {_pm(delta, se)})."
    rate = _interval(metrics, algo, "win_rate")
    suffix = "" if rate is None else f" (win rate {_rate(*rate)})"
    if delta > 0:
        return f"{algo} improved gold reward over {baseline} by {_pm(delta, se)}{suffix}."
    return f"{algo} made gold reward worse than {baseline}'s: Δ = {_pm(delta, se)}{suffix}."


def _interval(metrics: dict, algo: str, figure: str) -> tuple[float, float | None, float | None] | None:
    rate = metrics.get(f"eval/{algo}/{figure}")
    if rate is None:
        return None
    return float(rate), metrics.get(f"eval/{algo}/{figure}_low"), metrics.get(f"eval/{algo}/{figure}_high")


def _rate(rate: float, low: float | None, high: float | None) -> str:
    return f"{rate:.3f}" if low is None or high is None else f"{rate:.3f} [{low:.3f}, {high:.3f}]"


def _decided(rate: float, low: float | None, high: float | None) -> bool:
    """Whether a win rate's interval leaves out 1/2 (no interval: nothing is decided)."""
    return low is not None and high is not None and (low > 0.5 or high < 0.5)


def _against_half(rate: float, low: float | None, high: float | None) -> str:
    if not _decided(rate, low, high):
        return "no interval" if low is None or high is None else "its interval holds 0.5: no difference shown"
    return "better, beyond noise" if low > 0.5 else "worse, beyond noise"


def _value(metrics: dict, name: str, figure: str) -> tuple[float, float] | None:
    value, se = metrics.get(f"eval/{name}/{figure}"), metrics.get(f"eval/{name}/{figure}_se")
    if value is None or se is None:
        return None
    return float(value), float(se)


def _difference(metrics: dict, algo: str, figure: str) -> tuple[float, float] | None:
    delta, se = metrics.get(f"eval/{algo}/{figure}_diff"), metrics.get(f"eval/{algo}/{figure}_diff_se")
    if delta is None or se is None:
        return None
    return float(delta), float(se)


def _pm(delta: float, se: float, digits: int = 3) -> str:
    return f"{delta:+.{digits}f} ± {se:.{digits}f}"


def _se(value: float, se: float) -> str:
    return f"{value:.3f} ± {se:.3f}"
