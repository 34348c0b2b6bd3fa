"""``lab_blocks``: the lab's multi-turn task -- a step trace written one block per turn, each checked by an oracle.

Why this task: it is the lab's own step-trace domains (``inc``, ``rot``: mopdx_lab/domains.py)
cut into turns, so a multi-turn run and a single-turn run ask for the same skill and differ
only in the episode around it.  The student writes one block per turn; the oracle (the
environment) compares it with the reference's block: a wrong block ends the episode (reward
0), a right one is answered ``next`` until ``BLOCKS`` blocks are right (reward 1).  Three
blocks, not the domain's ten: an episode of ten turns (~15 tokens each with the chat
markers) would not fit the lab model's 128 positions.
"""

from __future__ import annotations

from mopdx.data import Example
from mopdx.envs.base import Message, Step

BLOCKS = 3


class BlockOracle:
    def __init__(self) -> None:
        self.blocks: list[str] = []
        self.done = 0

    def reset(self, example: Example) -> list[Message]:
        self.blocks = example.answer.split()[:BLOCKS]
        self.done = 0
        return example.messages()

    def step(self, text: str) -> Step:
        if text.strip() != self.blocks[self.done]:
            return Step(done=True, reward=0.0)
        self.done += 1
        if self.done == len(self.blocks):
            return Step(done=True, reward=1.0)
        return Step(observation=[{"role": "user", "content": "next"}])
