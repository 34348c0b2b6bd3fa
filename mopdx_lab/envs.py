"""``lab_blocks``: the lab's multi-turn task -- a step trace written one block per turn, each checked by an oracle.

Why this task: it is the lab's own step-trace domains (``inc``, ``rot``: mopdx_lab/domains.py)
cut into turns, so a multi-turn run and a single-turn run ask for the same skill and differ
only in the episode around it.  The student writes one block per turn; the oracle (the
environment) compares it with the reference's block: a wrong block ends the episode (reward
0), a right one is answered ``next`` until ``BLOCKS`` blocks are right (reward 1).  Three
blocks, not the domain's ten: an episode of ten turns (~15 tokens each with the chat
markers) would not fit the lab model's 128 positions.

Two probes measure the multi-turn models' builder (mopdx_lab/blocks.py): ``BlockTrace`` is the
same skill asked in one turn (the whole trace at once, graded on its first ``BLOCKS`` blocks),
``BlockFormat`` the format alone (``next`` to any well-formed block, right or wrong).
"""

from __future__ import annotations

import re

from mopdx.data import Example
from mopdx.envs.base import Message, Step

BLOCKS = 3
NEXT = "next"  # the oracle's answer to a right block
# the episode's system prompt: without it an episode's first turn would be the single-turn prompt itself, and a
# model taught both formats could not tell which one it is asked (it learned a mix of the two)
SYSTEM = "one block per turn"


class BlockOracle:
    def __init__(self) -> None:
        self.blocks: list[str] = []
        self.done = 0

    def reset(self, example: Example) -> list[Message]:
        self.blocks = example.answer.split()[:BLOCKS]
        self.done = 0
        return [{"role": "system", "content": SYSTEM}, *example.messages()]

    def accepts(self, turn: str, block: str) -> bool:
        """Whether ``turn`` (stripped) passes for the reference's ``block``: here, only the block itself."""
        return turn == block

    def step(self, text: str) -> Step:
        if not self.accepts(text.strip(), self.blocks[self.done]):
            return Step(done=True, reward=0.0)
        self.done += 1
        if self.done == len(self.blocks):
            return Step(done=True, reward=1.0)
        return Step(observation=[{"role": "user", "content": NEXT}])


class BlockTrace:
    """One turn: the whole trace, rewarded 1 when its first ``BLOCKS`` blocks are the reference's."""

    def __init__(self) -> None:
        self.blocks: list[str] = []

    def reset(self, example: Example) -> list[Message]:
        self.blocks = example.answer.split()[:BLOCKS]
        return example.messages()

    def step(self, text: str) -> Step:
        return Step(done=True, reward=float(text.split()[:BLOCKS] == self.blocks))


class BlockFormat(BlockOracle):
    """The oracle's episode graded on form alone: 1 when every one of ``BLOCKS`` turns is one block of the
    reference's width (right or wrong), 0 at the first turn that is not (a whole trace, an empty turn)."""

    def accepts(self, turn: str, block: str) -> bool:
        return re.fullmatch(rf"\d{{{len(block)}}}", turn) is not None
