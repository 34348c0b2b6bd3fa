"""Multi-turn episodes (mopdx/envs/episodes.py): the mask, the log-probs' alignment, failing environments, replay."""

from __future__ import annotations

import time

import pytest
import torch
from episode_fakes import Scripted, lab_chat_tokenizer

from mopdx.backends.base import Sampling, ScoreRequest
from mopdx.backends.hf import HFRolloutBackend, HFTeacherScorer
from mopdx.data import Example
from mopdx.envs.base import Step
from mopdx.envs.episodes import EpisodeSpec, render, run_episodes


class Oracle:
    """Answers ``got <text>`` twice, then ends the episode with reward 1."""

    def __init__(self) -> None:
        self.n = 0

    def reset(self, example: Example):
        return example.messages()

    def step(self, text: str) -> Step:
        self.n += 1
        return Step(done=True, reward=1.0) if self.n == 3 else Step(observation=[{"role": "user", "content": f"got {text}"}])


@pytest.fixture(scope="module")
def chat_tokenizer():
    return lab_chat_tokenizer()


def test_the_mask_covers_exactly_the_students_tokens(chat_tokenizer) -> None:
    tok = chat_tokenizer
    turns = ["ask 1", "ask 2", "5 6"]
    ex = Example("inc", "inc: 1234", "")
    rollouts, rewards, stats = run_episodes(Scripted(tok, turns), tok, [ex], lambda e: Oracle(), Sampling(max_new_tokens=16), EpisodeSpec(max_tokens=120))
    assert rewards.tolist() == [1.0] and stats["env/turns"] == 3 and stats["env/failed"] == 0
    ids, mask = rollouts.completion_ids[0].tolist(), rollouts.completion_mask[0].tolist()
    n = int(rollouts.attention_mask[0, rollouts.prompt_len:].sum())
    mine = [t for t, m in zip(ids[:n], mask[:n]) if m]
    assert mine == [t for text in turns for t in tok.encode(text, add_special_tokens=False) + [tok.eos_token_id]]
    # the whole episode is the chat template's rendering of the whole chat, turn after turn
    chat = [*ex.messages()]
    for k, text in enumerate(turns):
        chat.append({"role": "assistant", "content": text})
        if k < 2:
            chat.append({"role": "user", "content": f"got {text}"})
    seq, start = rollouts.unpadded()
    assert tok.decode(seq[0], skip_special_tokens=False) == render(tok, chat, generation=False).rstrip("\n")
    # what is not the student's decodes to the environment's turns and the template's markers
    theirs = tok.decode([t for t, m in zip(ids[:n], mask[:n]) if not m], skip_special_tokens=False)
    assert "got ask 1" in theirs and "got ask 2" in theirs and "ask" not in theirs.replace("got ask", "")
    assert rollouts.rollout_logps[0][rollouts.completion_mask[0] == 0].abs().sum() == 0


def test_teacher_logps_line_up_with_the_episode(chat_tokenizer) -> None:
    from mopdx_lab.model_factory import TinyModelSpec, build_tiny_qwen2

    tok = chat_tokenizer
    model = build_tiny_qwen2(TinyModelSpec(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64, lm_head_std=0.5), tok, seed=0).eval()

    class Stops(Oracle):  # every turn ends at a stop string, since a random model rarely writes EOS
        pass

    examples = [Example("inc", "inc: 1234", ""), Example("inc", "inc: 99", "")]
    spec = EpisodeSpec(max_tokens=100, stop=("5",))
    rollouts, _, _ = run_episodes(HFRolloutBackend(model, tok.pad_token_id, tok.eos_token_id), tok, examples, lambda e: Stops(),
                                  Sampling(n=2, max_new_tokens=12, seed=3), spec)
    assert len(rollouts) == 4 and rollouts.completion_mask.sum() > 0
    lt = HFTeacherScorer(model).score(rollouts, ScoreRequest()).logps
    mask = rollouts.completion_mask.bool()
    # the sampler's log-probs at the student's tokens are the model's own prefill of the episode there
    assert torch.allclose(lt[mask], rollouts.rollout_logps[mask], atol=1e-4)
    # and a plain forward of each unpadded episode gives the same values at the same tokens
    seqs, starts = rollouts.unpadded()
    for i, (seq, k) in enumerate(zip(seqs, starts)):
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([seq])).logits[0, :-1], -1).gather(-1, torch.tensor(seq[1:]).unsqueeze(-1)).squeeze(-1)
        n = len(seq) - k
        assert torch.allclose(logp[k - 1 :][:n], lt[i, :n], atol=1e-4)


class Raises(Oracle):
    def step(self, text: str) -> Step:
        raise RuntimeError("tool crashed")


class Hangs(Oracle):
    def step(self, text: str) -> Step:
        time.sleep(3)
        return Step(done=True, reward=1.0)


def test_an_environment_that_raises_or_hangs_fails_its_episode_only(chat_tokenizer) -> None:
    tok = chat_tokenizer
    envs = {"a": Oracle, "b": Raises, "c": Hangs}
    examples = [Example(d, "inc: 1", "") for d in envs]
    t0 = time.perf_counter()
    rollouts, rewards, stats = run_episodes(Scripted(tok, ["1", "2", "3"]), tok, examples, lambda e: envs[e.domain](), Sampling(max_new_tokens=8),
                                            EpisodeSpec(max_tokens=100, timeout_s=0.3))
    assert time.perf_counter() - t0 < 2.5  # the hung call is not waited for
    assert rewards.tolist() == [1.0, 0.0, 0.0] and stats["env/failed"] == pytest.approx(2 / 3)
    assert rollouts.completion_mask[1].sum() == rollouts.completion_mask[2].sum() == 2  # one turn ("1" + EOS), then failed


def test_keyed_episodes_replay_whatever_else_is_in_the_batch(chat_tokenizer) -> None:
    from mopdx_lab.model_factory import TinyModelSpec, build_tiny_qwen2

    tok = chat_tokenizer
    model = build_tiny_qwen2(TinyModelSpec(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64, lm_head_std=0.5), tok, seed=1).eval()
    backend = HFRolloutBackend(model, tok.pad_token_id, tok.eos_token_id)
    spec = EpisodeSpec(max_tokens=60, stop=("5",))
    a, b = Example("inc", "inc: 1234", ""), Example("inc", "inc: 77", "")
    s = Sampling(max_new_tokens=10, seed=7, keyed=True)
    one, _, _ = run_episodes(backend, tok, [a], lambda e: Oracle(), s, spec, prompt_keys=[11])
    two, _, _ = run_episodes(backend, tok, [b, a], lambda e: Oracle(), s, spec, prompt_keys=[5, 11])
    assert one.unpadded()[0][0] == two.unpadded()[0][1]  # the same key: the same episode


def test_python_tool_runs_a_call_in_the_sandbox_and_grades_the_final_answer() -> None:
    from mopdx.envs.python_tool import PythonTool

    env = PythonTool()
    assert env.reset(Example("math", "what is 17 * 23?", "391"))[-1]["content"] == "what is 17 * 23?"
    step = env.step("let me compute <python>print(17 * 23)</python>")
    assert not step.done and step.observation == [{"role": "user", "content": "<output>391</output>"}]
    assert "ZeroDivisionError" in env.step("<python>1/0</python>").observation[0]["content"]
    assert env.step("391").reward == 1.0  # graded by the domain's verifier (exact match: no data.verifiers here)
    env.reset(Example("math", "what is 17 * 23?", "391"))
    assert env.step("392") == Step(done=True, reward=0.0)


def test_evaluation_scores_an_environment_domain_by_its_episodes(chat_tokenizer) -> None:
    from mopdx.config import EvalConfig
    from mopdx.run.evaluation import accuracy_by_domain

    tok = chat_tokenizer
    examples = [Example("inc", "inc: 1", "")]  # no reference answer: the episode's reward is the grade
    settings = EvalConfig(samples=1, max_new_tokens=8)
    episodes = (lambda e: Oracle(), EpisodeSpec(max_tokens=100))
    assert accuracy_by_domain(Scripted(tok, ["1", "2", "3"]), tok, examples, settings, episodes=episodes) == {"inc": 1.0}
    assert accuracy_by_domain(Scripted(tok, ["1", "2", "3"]), tok, examples, settings) == {"inc": 0.0}  # one turn, verifier: no answer
