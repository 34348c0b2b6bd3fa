"""Multi-turn rollouts: the student's turns and the environment's answers, as one masked sequence.

An episode alternates: the student samples an assistant turn with the run's rollout
backend (any of them: a turn is an ordinary completion of the episode so far), the
environment answers (``mopdx.envs.base.Environment.step``), and its answer is appended
as the chat template writes it.  The episode is returned as a ``Rollouts`` row whose
``completion_ids`` hold everything after the first prompt -- the student's turns *and*
the environment's tokens, all attended to -- while ``completion_mask`` marks only the
student's own tokens.  So teachers prefill the whole episode (their log-probs at the
student's tokens are conditioned on every observation) and the loss, the selection and
the token counts read only what the student wrote, with no change to them.

Episodes run batched: each turn samples every unfinished episode in one backend call;
finished ones leave the batch.  Environment calls run in a thread pool with a timeout
per call: an environment that raises or does not answer in ``timeout_s`` ends its
episode as failed (reward 0) without stopping the step (a code-running environment
should do its work in a child process, as the ``code`` verifier's sandbox does, so a
hung call costs a thread, not the trainer).  A turn ends at EOS or at a stop string
(``data.stop`` and the environment's own, e.g. a tool call's closing tag); a turn cut by
the token limit, or an episode past its turn or token budget, ends the episode.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from mopdx.backends.base import Rollouts, RolloutBackend, Sampling
from mopdx.data import Example
from mopdx.envs.base import Environment, Message, Step
from mopdx.errors import ConfigError
from mopdx.stops import cut_at_stops
from mopdx.text import FORMAT, left_pad, right_pad


@dataclass(frozen=True)
class EpisodeSpec:
    """Budgets of one episode (``env.max_turns``, ``env.max_tokens``, ``env.timeout_s``, ``env.workers``)."""

    max_turns: int = 4
    max_tokens: int = 256  # student + environment tokens after the first prompt
    timeout_s: float = 30.0  # per environment call
    workers: int = 8
    stop: tuple[str, ...] = ()  # stop strings that end a turn, beside data.stop


@dataclass
class Episode:
    env: Environment
    messages: list[Message]
    prompt: list[int]
    tokens: list[int] = field(default_factory=list)  # after the prompt
    mine: list[float] = field(default_factory=list)  # 1 where the student wrote the token
    logps: list[float] = field(default_factory=list)
    turns: int = 0
    done: bool = False
    failed: str = ""  # why the environment failed the episode ("" = it did not)
    reward: float = 0.0


def render(tokenizer: PreTrainedTokenizerBase, messages: list[Message], generation: bool) -> str:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=generation, tokenize=False, **FORMAT.template_kwargs)


def observation_ids(tokenizer: PreTrainedTokenizerBase, messages: list[Message], text: str, ended_eos: bool, observation: list[Message]) -> list[int]:
    """The tokens the chat template puts between the end of the student's turn (``text``, then EOS
    when ``ended_eos``) and the student's next turn: the turn's closing, ``observation``, the next
    assistant header.  Needs a template whose rendering of a longer chat extends the shorter one's."""
    closed = render(tokenizer, [*messages, {"role": "assistant", "content": text}], generation=False)
    following = render(tokenizer, [*messages, {"role": "assistant", "content": text}, *observation], generation=True)
    end = closed.rfind(text) + len(text) if text else len(render(tokenizer, messages, generation=True))
    if (text and closed.rfind(text) < 0) or not following.startswith(closed[:end]):
        raise ConfigError("the chat template does not render a longer chat as an extension of a shorter one (e.g. it drops earlier turns' "
                          "reasoning), so an episode's tokens cannot be appended turn by turn; use a template that keeps every turn")
    tail = following[end:]
    eos = tokenizer.eos_token or ""
    if ended_eos and eos and tail.startswith(eos):
        tail = tail[len(eos):]  # the student's own EOS token already closes its turn
    return tokenizer.encode(tail, add_special_tokens=False)


def _call(pool: ThreadPoolExecutor, fn: Callable[..., Any], arg: Any, timeout: float) -> tuple[Any, str]:
    """``fn(arg)`` in the pool, or ("", why) when it raises or takes longer than ``timeout`` seconds."""
    future = pool.submit(fn, arg)
    try:
        return future.result(timeout=timeout), ""
    except FutureTimeout:
        return None, f"no answer in {timeout:g} s"
    except Exception as exc:  # noqa: BLE001 - any environment error fails its episode only
        return None, f"{type(exc).__name__}: {exc}"


def episode_key(prompt_key: int, sample: int, turn: int) -> int:
    """The keyed-sampling key of one turn of one episode: a resumed run replays the same episodes."""
    return ((prompt_key * 1_000_003 + sample) * 10_007 + turn) % (2**62)


def run_episodes(
    backend: RolloutBackend, tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example], make_env: Callable[[Example], Environment],
    sampling: Sampling, spec: EpisodeSpec, prompt_keys: Sequence[int] | None = None,
) -> tuple[Rollouts, torch.Tensor, dict[str, float]]:
    """``sampling.per_prompt`` episodes of each example; returns the episodes as rollouts (the student's
    tokens in ``completion_mask``), each episode's reward (NaN where its environment gave none: a
    single-turn domain, graded by its verifier) and the batch's episode statistics."""
    keys = list(prompt_keys) if prompt_keys is not None else list(range(len(examples)))
    per = sampling.per_prompt
    pool = ThreadPoolExecutor(max_workers=max(1, spec.workers), thread_name_prefix="env")
    try:
        episodes = [_start(pool, make_env(e), e, tokenizer, spec) for e in examples for _ in range(per)]
        for turn in range(spec.max_turns):
            active = [i for i, ep in enumerate(episodes) if not ep.done]
            if not active:
                break
            _turn(backend, tokenizer, episodes, active, examples, sampling, spec, keys, per, turn, pool)
        for ep in episodes:
            if not ep.done:  # out of turns
                ep.done, ep.reward = True, 0.0
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    rollouts = _as_rollouts(episodes, tokenizer, [examples[i // per].domain for i in range(len(episodes))], per)
    rewards = torch.tensor([ep.reward for ep in episodes], dtype=torch.float32)
    rollouts.episode_rewards = rewards
    stats = {"env/turns": sum(ep.turns for ep in episodes) / len(episodes), "env/failed": sum(bool(ep.failed) for ep in episodes) / len(episodes),
             "env/env_tokens": sum(len(ep.mine) - sum(ep.mine) for ep in episodes) / len(episodes)}
    return rollouts, rewards, stats


def _start(pool: ThreadPoolExecutor, env: Environment, example: Example, tokenizer: PreTrainedTokenizerBase, spec: EpisodeSpec) -> Episode:
    messages, why = _call(pool, env.reset, example, spec.timeout_s)
    ep = Episode(env, list(messages or example.messages()), [])
    ep.prompt = tokenizer.encode(render(tokenizer, ep.messages, generation=True), add_special_tokens=False)
    if why:
        ep.done, ep.failed = True, f"reset: {why}"
    return ep


def _turn(backend: RolloutBackend, tokenizer: PreTrainedTokenizerBase, episodes: list[Episode], active: list[int], examples: Sequence[Example],
          sampling: Sampling, spec: EpisodeSpec, keys: list[int], per: int, turn: int, pool: ThreadPoolExecutor) -> None:
    """One assistant turn of every episode in ``active``, then the environment's answer to each."""
    room = [spec.max_tokens - len(episodes[i].tokens) for i in active]
    budget = max(1, min(sampling.max_new_tokens, max(room)))
    # one sample per episode and turn; keyed: each turn's sample a function of (seed, episode, turn) alone
    s = replace(sampling, n=1, max_new_tokens=budget, seed=None if sampling.seed is None or sampling.keyed else sampling.seed + turn)
    if sampling.keyed:
        s = s.with_keys([episode_key(keys[i // per], i % per, turn) for i in active])
    out = backend.generate([episodes[i].prompt + episodes[i].tokens for i in active], [examples[i // per].domain for i in active], s)
    out = cut_at_stops(out, tokenizer, (*FORMAT.stop, *spec.stop))
    texts: dict[int, tuple[str, bool]] = {}
    for row, i in enumerate(active):
        ep = episodes[i]
        n = min(int(out.completion_mask[row].sum().item()), room[row])
        ids = out.completion_ids[row, :n].tolist()
        ep.tokens += ids
        ep.mine += [1.0] * n
        ep.logps += out.rollout_logps[row, :n].float().tolist()
        ep.turns += 1
        ended_eos = bool(ids) and ids[-1] == tokenizer.eos_token_id
        text = tokenizer.decode(ids[:-1] if ended_eos else ids, skip_special_tokens=False)
        stopped = any(x in text for x in (*FORMAT.stop, *spec.stop))  # cut at a stop string (its last token may run past it)
        if not (ended_eos or stopped) or len(ep.tokens) >= spec.max_tokens:
            ep.done, ep.reward = True, 0.0  # cut by the token limit: a truncated episode
            continue
        texts[i] = (text, ended_eos)
    steps = {i: pool.submit(episodes[i].env.step, texts[i][0]) for i in texts}
    for i, future in steps.items():
        ep = episodes[i]
        try:
            answer: Step = future.result(timeout=spec.timeout_s)
        except FutureTimeout:
            ep.done, ep.failed, ep.reward = True, f"step: no answer in {spec.timeout_s:g} s", 0.0
            continue
        except Exception as exc:  # noqa: BLE001 - an environment error fails its episode only
            ep.done, ep.failed, ep.reward = True, f"step: {type(exc).__name__}: {exc}", 0.0
            continue
        text, ended_eos = texts[i]
        if answer.done:
            ep.done, ep.reward = True, float(answer.reward)
            continue
        extra = observation_ids(tokenizer, ep.messages, text, ended_eos, list(answer.observation))
        ep.messages += [{"role": "assistant", "content": text}, *answer.observation]
        if len(ep.tokens) + len(extra) >= spec.max_tokens:
            ep.done, ep.reward = True, 0.0  # no room left for another turn
            continue
        ep.tokens += extra
        ep.mine += [0.0] * len(extra)
        ep.logps += [0.0] * len(extra)


def _as_rollouts(episodes: list[Episode], tokenizer: PreTrainedTokenizerBase, domains: list[str], per: int) -> Rollouts:
    p_ids, p_mask = left_pad([ep.prompt for ep in episodes], tokenizer.pad_token_id)
    width = max(1, max(len(ep.tokens) for ep in episodes))
    c_ids, c_attn = right_pad([ep.tokens for ep in episodes], tokenizer.pad_token_id, width=width)
    mine, _ = right_pad([ep.mine for ep in episodes], 0.0, width=width, dtype=torch.float32)
    logps, _ = right_pad([ep.logps for ep in episodes], 0.0, width=width, dtype=torch.float32)
    return Rollouts(input_ids=torch.cat([p_ids, c_ids], 1), attention_mask=torch.cat([p_mask, c_attn], 1), prompt_len=p_ids.shape[1],
                    completion_mask=mine, rollout_logps=logps, domains=domains,
                    prompt_index=torch.arange(len(episodes)) // per)


def fill_rewards(env_rewards: torch.Tensor, verifier: Callable[[], torch.Tensor]) -> torch.Tensor:
    """Episode rewards, with the verifier's where an episode's environment gave none (NaN)."""
    missing = torch.isnan(env_rewards)
    if not bool(missing.any()):
        return env_rewards
    return torch.where(missing, verifier().to(env_rewards.device).float(), env_rewards)


__all__ = ["Episode", "EpisodeSpec", "episode_key", "fill_rewards", "observation_ids", "run_episodes"]
