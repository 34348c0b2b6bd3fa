"""``python_tool``: the student may run Python (a calculator, a code runner) and read its output before it answers.

A turn that contains ``<python>CODE</python>`` is a tool call: ``CODE`` runs in the
``code`` verifier's sandbox (``mopdx.verifiers.code_exec``: its own isolated child
process with wall-clock, CPU, memory and output limits, no network, no new processes),
and the environment answers with a user turn ``<output>STDOUT</output>`` (the error's
last line when the program fails, ``timed out`` when it runs past its limit).  A turn
without a tool call is the final answer: the episode ends, graded by the domain's
verifier against the example's answer (reward 1 or 0).  Give ``env.stop: ["</python>"]``
so a tool call ends the turn where the call closes.
"""

from __future__ import annotations

import re

from mopdx.data import Example
from mopdx.envs.base import Message, Step
from mopdx.verifiers import grade
from mopdx.verifiers.code_exec import CodeVerifier

CALL = re.compile(r"<python>(.*?)(?:</python>|$)", re.DOTALL)
OUTPUT_CHARS = 400  # an observation's length limit: the episode's token budget is small


class PythonTool:
    """One episode: the example's chat, tool calls answered by the sandbox, a final answer graded."""

    timeout_s = 5.0
    memory_mb = 512

    def __init__(self) -> None:
        self.example: Example | None = None
        self.sandbox = CodeVerifier(timeout_s=self.timeout_s, memory_mb=self.memory_mb)

    def reset(self, example: Example) -> list[Message]:
        self.example = example
        return example.messages()

    def step(self, text: str) -> Step:
        assert self.example is not None, "reset() first"
        call = CALL.search(text)
        if call is None:
            ok = grade(self.example.domain, [self.example.answer], [text]).correct[0]
            return Step(done=True, reward=float(ok))
        result = self.sandbox.run_code(call.group(1), "")
        if result.timed_out:
            shown = "timed out"
        elif result.passed:
            shown = result.stdout.strip()
        else:
            shown = (result.stderr.strip().splitlines() or [result.error or f"exit status {result.returncode}"])[-1]
        return Step(observation=[{"role": "user", "content": f"<output>{shown[:OUTPUT_CHARS]}</output>"}])
