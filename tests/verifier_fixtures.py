"""User verifiers for tests/unit/test_verifiers.py (``package.module:attr`` specs)."""


def ends_with_answer(answer: str, completion: str) -> bool:
    return completion.strip().endswith(answer)


class Prefix:
    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix

    def verify(self, answer: str, completion: str) -> bool:
        return completion == self.prefix + answer

    def leaks(self, feedback: str, answer: str) -> bool:
        return answer in feedback


def always_raises(answer: str, completion: str) -> bool:
    raise RuntimeError("this verifier is broken")
