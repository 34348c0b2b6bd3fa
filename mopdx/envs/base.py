"""The environment contract: what a multi-turn rollout talks to between the student's turns.

Why a protocol this small: agentic teachers (tool calls, code runners, oracles) are
distilled on *episodes* -- the student's turns interleaved with the environment's
answers -- and every such environment needs only two calls.  ``reset(example)`` gives
the first messages (the prompt, as chat messages); ``step(text)`` takes the student's
assistant turn (its decoded text) and gives either the environment's answer (messages
appended under the chat template, masked out of the loss) or the end of the episode
with its reward.  One instance serves one episode, so an environment may keep state.

Environments are chosen per domain (``env.environments``), by name from the built-ins
(``mopdx.envs.registry``) or a plug-in's ``environments()``, or as ``module:Class``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from mopdx.data import Example

Message = dict[str, str]


@dataclass
class Step:
    """The environment's answer to one assistant turn.

    ``observation``: messages appended before the student's next turn (ignored when
    ``done``); ``reward``: the episode's reward, read when ``done`` (GRPO's reward)."""

    observation: list[Message] = field(default_factory=list)
    done: bool = False
    reward: float = 0.0


@runtime_checkable
class Environment(Protocol):
    def reset(self, example: Example) -> list[Message]: ...

    def step(self, text: str) -> Step: ...


class SingleTurn:
    """The episode of a domain without an environment: its prompt, one turn, done (reward from its verifier)."""

    def reset(self, example: Example) -> list[Message]:
        return example.messages()

    def step(self, text: str) -> Step:
        return Step(done=True, reward=float("nan"))
