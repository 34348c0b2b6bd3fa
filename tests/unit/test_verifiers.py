"""The built-in verifiers on completions in the forms real models write, false positives included."""

from __future__ import annotations

import pytest

from mopdx.errors import ConfigError
from mopdx.verifiers import build, configure, grade, grade_mixed, grader, verifier_for
from mopdx.verifiers.extract import after_hashes, answer_is, boxed, final_answer, last_number
from mopdx.verifiers.grading import UNGRADED

COT = "Natalia sold 48 clips in April and half as many in May: 48 / 2 = 24. In total 48 + 24 = 72."


def test_extraction_anchors_and_their_order() -> None:
    assert boxed(r"so \boxed{\frac{1}{2}} and later \boxed{3}") == "3"  # the last box: models revise
    assert boxed(r"\boxed{x^{2}+1}") == "x^{2}+1"  # nested braces
    assert boxed(r"\boxed{unclosed") is None
    assert after_hashes("6*7=42.\n#### 42") == "42"
    assert answer_is("So the answer is 18.") == "18"
    assert answer_is("The final answer is $\\frac{3}{4}$.") == "\\frac{3}{4}"
    assert answer_is("Final Answer: 3.5") == "3.5"
    assert final_answer(r"#### 7 but \boxed{8}") == "8"  # boxed outranks ####
    assert final_answer("no anchor here 12") is None
    assert last_number("carry 142 then 1,000 apples") == "1,000"
    assert last_number("x = 142") == "142"


@pytest.mark.parametrize(("answer", "completion", "ok"), [
    ("42", r"6 times 7 is 42. The answer is \boxed{42}.", True),
    ("42", "6*7=42.\n#### 42", True),
    ("42", "Multiplying, we get 42. The answer is 42.", True),
    ("42", "The answer is 42 because 6 * 7 = 42.", True),  # the number, not the sentence after it
    ("42", "Therefore, the final answer is $\\boxed{42}$. I hope it is correct.", True),
    ("42", "**Answer:** 42", True),
    ("72", COT, True),  # no anchor: the last number
    ("72", COT + " #### 72", True),
    (r"\frac{1}{2}", r"\boxed{0.5}", True),  # math-verify's equivalence, not string equality
    ("0.5", r"The answer is $\dfrac{1}{2}$.", True),
    ("1000", r"\boxed{1,000}", True),
    ("x^2+2x+1", r"\boxed{(x+1)^2}", True),
    ("Janet makes 16 - 3 - 4 = 9 eggs... #### 18", "She earns 9 * 2 = 18 dollars. #### 18", True),  # GSM8K CoT reference
    ("42", "so the total is 142", False),  # 42 inside 142 is not 42
    ("42", r"\boxed{142}", False),
    ("42", "#### 41", False),
    ("42", r"First 42 apples, then the answer is \boxed{43}", False),  # the anchor wins over an earlier 42
    ("42", "I do not know.", False),
])
def test_math(answer: str, completion: str, ok: bool) -> None:
    assert build("math").verify(answer, completion) is ok


def test_math_without_fallback_needs_an_anchor() -> None:
    strict = build({"name": "math", "fallback": "none"})
    assert not strict.verify("72", COT)
    assert strict.verify("72", COT + r" \boxed{72}")
    assert strict.extract(COT) is None


def test_math_leaks_the_reference_answer_not_its_working() -> None:
    v = build("math")
    assert v.leaks("the total is 18 dollars", "Janet ... #### 18")
    assert not v.leaks("the total is 180 dollars", "Janet ... #### 18")


@pytest.mark.parametrize(("answer", "completion", "ok"), [
    ("3.14159", "pi is about 3.1416", True),  # rel_tol 1e-3 below
    ("100", "The answer is $100.", True),
    ("1234", "Total: 1,234 apples. #### 1,234", True),
    ("0.75", "#### 3/4", True),
    ("42", "I counted 142", False),
    ("42", "#### forty-two", False),
])
def test_numeric(answer: str, completion: str, ok: bool) -> None:
    assert build({"name": "numeric", "rel_tol": 1e-3}).verify(answer, completion) is ok


@pytest.mark.parametrize(("answer", "completion", "ok"), [
    ("B", "The correct answer is (B).", True),
    ("B", "Answer: b", True),
    ("B", "Let me think. Aspirin inhibits COX.\nB", True),
    ("B", r"\boxed{B}", True),
    ("B", r"\boxed{\text{B}}", True),
    ("(B)", "**B**", True),
    ("B. aspirin", "The answer is B", True),
    ("C", "Option A is wrong, (B) is wrong, so the answer is (C).", True),  # the last committed answer
    ("B", "Because the drug binds the receptor, the answer is A.", False),  # B of "Because" is no option
    ("B", "TB is a bacterial infection.", False),  # a capital inside a word
    ("B", "a b c", False),  # lower-case letters count only after an anchor
    ("J", "Answer: J", True),
    ("B", "I cannot tell.", False),
])
def test_choice(answer: str, completion: str, ok: bool) -> None:
    assert build("choice").verify(answer, completion) is ok


def test_choice_letters_option_and_answer_check() -> None:
    v = build({"name": "choice", "letters": "ABCD"})
    assert not v.verify("E", "Answer: E")  # outside the options
    assert v.check_answer("E") is not None
    assert v.check_answer("C") is None
    with pytest.raises(ConfigError, match="letters"):
        build({"name": "choice", "letters": "AAB"})


def test_exact_and_regex() -> None:
    assert build("exact").verify("1 2 3", " 1  2 3\n")
    assert not build("exact").verify("42", "#### 42")  # exact means the whole completion
    rx = build({"name": "regex", "pattern": r"Result:\s*(\S+)"})
    assert rx.verify("7", "work... Result: 3\nfixed. Result: 7")  # the last match
    assert not rx.verify("7", "Result: 17")
    assert rx.extract("nothing") is None
    with pytest.raises(ConfigError, match="exactly one capturing group"):
        build({"name": "regex", "pattern": r"(a)(b)"})
    with pytest.raises(ConfigError, match="does not compile"):
        build({"name": "regex", "pattern": r"(a"})


def test_table_names_and_user_verifiers() -> None:
    with pytest.raises(ConfigError, match="unknown verifier; built in: math, numeric, choice, exact, regex, code"):
        build("nope")
    with pytest.raises(ConfigError, match="cannot import"):
        build("no_such_module_xyz:fn")
    with pytest.raises(ConfigError, match="does not take"):
        build({"name": "numeric", "tolerance": 1})
    fn = build("verifier_fixtures:ends_with_answer")
    assert fn.verify("42", "... 42") and not fn.verify("42", "42 ...")
    cls = build({"name": "verifier_fixtures:Prefix", "prefix": "ANS "})
    assert cls.verify("7", "ANS 7")


def test_configured_table_wins_over_plug_ins_and_the_default() -> None:
    try:
        assert verifier_for("math") is None and type(grader("math")).__name__ == "ExactMatch"
        configure({"math": "math", "add": "numeric"})
        assert type(grader("math")).__name__ == "MathVerifier"
        assert type(grader("add")).__name__ == "NumericVerifier"  # over the lab plug-in's own verifier of 'add'
    finally:
        configure({})
    assert type(grader("add")).__name__ != "NumericVerifier"


class Raises:
    def verify(self, answer: str, completion: str) -> bool:
        if "boom" in completion:
            raise ValueError("cannot parse")
        return answer == completion

    def leaks(self, feedback: str, answer: str) -> bool:
        return False


def test_a_raising_verifier_fails_only_its_samples(caplog: pytest.LogCaptureFixture) -> None:
    before = UNGRADED["d"]
    g = grade("d", ["1", "2", "3"], ["1", "boom", "3"], Raises())
    assert g.correct == [True, False, True] and g.ungraded == 1
    assert UNGRADED["d"] == before + 1
    assert "raised on 1 of 3 samples" in caplog.text
    mixed = grade_mixed(["d", "e", "d"], ["1", "x", "2"], ["boom", "x", "2"], {"d": Raises(), "e": Raises()})
    assert mixed.correct == [False, True, True] and mixed.ungraded == 1


def test_verify_command_prints_verdict_and_extraction(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    import json

    from mopdx.cli import main

    assert main(["verify", "--verifier", "math", "--answer", "42", "--completion", r"so \boxed{42}."]) == 0
    assert capsys.readouterr().out == "correct 42\n"
    assert main(["verify", "--verifier", "math", "--answer", "42", "--completion", "the total is 142"]) == 0  # exit 0 whatever the verdict
    assert capsys.readouterr().out == "wrong 142\n"
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps(p) for p in [{"answer": "B", "completion": "Answer: (B)"}, {"answer": "B", "completion": "Because."}]))
    assert main(["verify", "--verifier", "choice", "--file", str(pairs)]) == 0
    assert capsys.readouterr().out.splitlines() == ["correct B", "wrong (none)"]
    assert main(["verify", "--verifier", "regex", "--option", r"pattern=Result: (\S+)", "--answer", "7", "--completion", "Result: 7"]) == 0
    assert capsys.readouterr().out == "correct 7\n"
    assert main(["verify", "--verifier", "nope", "--answer", "1", "--completion", "1"]) == 2
    assert "unknown verifier" in capsys.readouterr().err
    assert main(["verify", "--verifier", "math", "--answer", "1"]) == 2
    assert "--completion" in capsys.readouterr().err


def test_math_verify_missing_says_which_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "math_verify", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=r"needs the math-verify package: pip install \"mopdx\[math\]\""):
        build("math")
