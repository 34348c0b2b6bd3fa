"""Reading data as researchers have it: JSONL / Parquet / datasets folders, field maps, chat rows,
system prompts, prompt-length limits and stop strings -- all before any model loads."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import torch
from omegaconf import OmegaConf

from mopdx.backends.base import Rollouts
from mopdx.data import Example
from mopdx.data_sources import load_examples
from mopdx.errors import DataError
from mopdx.stops import cut_at_stops
from mopdx.text import configure_format, encode_prompt

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "recipes" / "data"


def data_cfg(**kw):
    return OmegaConf.create({"fields": {}, "system_prompts": {}, **kw})


def load(value, **kw) -> list[Example]:
    return load_examples(value, data_cfg(**kw), "data.train", str)


def test_recipe_files_in_three_formats() -> None:
    math = load([{"path": str(RECIPE / "math_train.parquet"), "domain": "math", "fields": {"prompt": "question", "answer": "solution"}}])
    assert len(math) == 36 and all(e.domain == "math" and "####" in e.answer for e in math)
    qa = load([{"path": str(RECIPE / "qa_train.jsonl"), "domain": "qa"}])
    assert len(qa) == 16 and qa[0].system.startswith("You are") and qa[0].answer in "ABCD" and "A. " in qa[0].prompt
    code = load([{"path": str(RECIPE / "code"), "split": "eval", "domain": "code", "fields": {"prompt": "task", "answer": "tests"}}])
    assert len(code) == 6 and code[0].answer.count("assert") == 2  # the list of tests, one per line


def test_field_map_and_errors_name_the_file_and_its_fields(tmp_path: Path) -> None:
    f = tmp_path / "gsm.jsonl"
    f.write_text(json.dumps({"question": "1+1?", "final": 2, "src": "math"}) + "\n")
    rows = load(str(f), fields={"prompt": "question", "answer": "final", "domain": "src"})
    assert rows == [Example("math", "1+1?", "2")]
    with pytest.raises(DataError, match=r"gsm.jsonl\): no field 'problem' \(data.fields.prompt\); the file's fields: question, final, src"):
        load(str(f), fields={"prompt": "problem"})
    with pytest.raises(DataError, match="no domain field 'domain'.*give the file one domain"):
        load(str(f), fields={"prompt": "question"})
    empty = tmp_path / "empty.parquet"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="is empty"):
        load(str(empty))
    with pytest.raises(DataError, match="not found"):
        load(str(tmp_path / "missing.parquet"))
    with pytest.raises(DataError, match="unknown format"):
        load(str(f.with_suffix(".csv")) if f.with_suffix(".csv").write_text("a") else "")
    with pytest.raises(DataError, match=r"a source needs 'path'"):
        load([{"file": str(f)}])


def test_datasets_folder_splits(tmp_path: Path) -> None:
    rows = [{"prompt": "p", "domain": "d", "answer": "a"}]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match=r"holds splits \['train', 'test'\]: choose one with split"):
        load(str(tmp_path / "dd"))
    assert load([{"path": str(tmp_path / "dd"), "split": "test"}]) == [Example("d", "p", "a")]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "one"))
    assert load(str(tmp_path / "one")) == [Example("d", "p", "a")]


def test_chat_messages_system_prompts_and_context(tmp_path: Path) -> None:
    f = tmp_path / "chat.jsonl"
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
            {"role": "user", "content": "3+3?"}, {"role": "assistant", "content": "6"}]
    f.write_text(json.dumps({"messages": chat, "domain": "math"}) + "\n" + json.dumps({"messages": chat[1:4], "domain": "qa"}) + "\n")
    first, second = load(str(f), system_prompts={"qa": "Answer with a letter.", "*": "default"})
    assert (first.system, first.prompt, first.answer, first.context) == ("Be brief.", "3+3?", "6", (("user", "2+2?"), ("assistant", "4")))
    assert second.system == "Answer with a letter." and second.answer == ""  # no final assistant turn: no reference
    assert load([{"path": str(f), "system": "per file"}])[1].system == "per file"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "assistant", "content": "x"}], "domain": "d"}) + "\n")
    with pytest.raises(DataError, match="must end with a user turn"):
        load(str(bad))


def test_encoding_uses_the_system_prompt_and_template_options(tiny_tokenizer) -> None:
    ex = Example("d", "hi", "", system="S", context=(("user", "u0"), ("assistant", "a0")))
    text = tiny_tokenizer.decode(encode_prompt(tiny_tokenizer, ex))
    assert text.index("system\nS") < text.index("user\nu0") < text.index("assistant\na0") < text.index("user\nhi")
    assert encode_prompt(tiny_tokenizer, Example("d", "hi", "")) == encode_prompt(tiny_tokenizer, "hi")  # lab data encodes as before
    template = tiny_tokenizer.chat_template
    try:
        tiny_tokenizer.chat_template = template + "{% if enable_thinking is defined and not enable_thinking %}<think></think>{% endif %}"
        configure_format({"enable_thinking": False})
        assert tiny_tokenizer.decode(encode_prompt(tiny_tokenizer, "hi")).endswith("<think></think>")
    finally:
        tiny_tokenizer.chat_template = template
        configure_format()


def test_stop_strings_cut_tokens_where_the_text_stops(tiny_tokenizer) -> None:
    tok = tiny_tokenizer
    texts = ["12 END 34", "no stop here"]
    rows = [tok.encode(t, add_special_tokens=False) for t in texts]
    width = max(map(len, rows))
    comp = torch.full((2, width), tok.pad_token_id)
    mask = torch.zeros(2, width)
    for i, r in enumerate(rows):
        comp[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    prompt = torch.ones(2, 3, dtype=torch.long)
    r = Rollouts(torch.cat([prompt, comp], 1), torch.cat([torch.ones(2, 3), mask], 1).long(), 3, mask, torch.zeros(2, width), ["d", "d"], torch.arange(2))
    cut = cut_at_stops(r, tok, ["END"])
    kept = cut.completion_ids[0][cut.completion_mask[0].bool()].tolist()
    assert tok.decode(kept).strip() == "12 END"  # the stop string is kept, nothing after it
    assert torch.equal(cut.completion_mask[1], r.completion_mask[1])
    assert cut_at_stops(r, tok, []) is r


def test_long_prompts_dropped_with_a_count_or_refused(tiny_tokenizer, caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    from mopdx.run.assembly import limit_prompts, prompt_limit

    short, long = Example("d", "1 2", "a"), Example("d", " ".join(["9"] * 50), "a")
    cfg = OmegaConf.create({"data": {"long_prompts": "drop", "max_prompt_tokens": 0}, "rollout": {"max_new_tokens": 8}, "eval": {"max_new_tokens": 16}})
    limit = len(encode_prompt(tiny_tokenizer, short)) + 2
    assert limit_prompts(cfg, tiny_tokenizer, [short, long, short], "data.train", limit) == [short, short]
    assert "data.train: 1 of 3 prompts are longer than" in caplog.text
    cfg.data.long_prompts = "refuse"
    with pytest.raises(DataError, match="1 of 2 prompts are longer.*data.long_prompts=drop"):
        limit_prompts(cfg, tiny_tokenizer, [short, long], "data.train", limit)
    with pytest.raises(DataError, match="none is left"):
        cfg.data.long_prompts = "drop"
        limit_prompts(cfg, tiny_tokenizer, [long], "data.eval", limit)
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 128}))
    assert prompt_limit(cfg, str(tmp_path)) == 128 - 16  # context minus the longer completion budget
    cfg.data.max_prompt_tokens = 40
    assert prompt_limit(cfg, str(tmp_path)) == 40


@pytest.mark.parametrize(("override", "message"), [
    ("data.train=[]", "data.train is an empty list"),
    ("data.train=[{file: x.jsonl}]", "a source needs 'path'"),
    ("data.train=[{path: x.parquet, fields: {question: q}}]", r"data.train\[0\].fields: unknown role"),
    ("data.eval=[lab:eval,lab:nope]", r"data.eval\[1\]"),
    ("data.verifiers.code={name: code, timeout: 3}", "does not take"),
])
def test_bad_data_config_is_one_line_at_load(override: str, message: str, tmp_path: Path) -> None:
    from mopdx.config import load_config
    from mopdx.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_config("mopd", [], [f"lab.root={tmp_path}", override])


def test_a_code_task_without_tests_is_refused_before_models_load(tmp_path: Path) -> None:
    from mopdx.config import load_config
    from mopdx.errors import ConfigError
    from mopdx.run.assembly import load_data

    f = tmp_path / "code.jsonl"
    f.write_text(json.dumps({"prompt": "write f", "domain": "code", "tests": []}) + "\n")
    cfg = load_config("mopd", [], [f"lab.root={tmp_path / 'lab'}", f"data.train={f}", f"data.eval={f}", "data.fields.answer=tests",
                                   "data.verifiers.code=code", "model.student=/some/student", "model.teachers.code=/some/folder"])
    with pytest.raises(ConfigError, match="data.eval: domain 'code': 1 of 1 examples cannot be graded.*needs tests"):
        load_data(cfg, progress=False)
    assert not (tmp_path / "lab").exists()  # nothing was built


def test_eval_counts_samples_no_verifier_could_grade(tiny_model_factory, tiny_tokenizer, caplog: pytest.LogCaptureFixture) -> None:
    from mopdx.backends.hf import HFRolloutBackend
    from mopdx.config import EvalConfig
    from mopdx.run.evaluation import accuracy_by_domain
    from mopdx.verifiers import configure

    tok = tiny_tokenizer
    try:
        configure({"d": "verifier_fixtures:always_raises"})
        acc = accuracy_by_domain(HFRolloutBackend(tiny_model_factory(), tok.pad_token_id, tok.eos_token_id), tok,
                                 [Example("d", "1 2", "3")] * 3, EvalConfig(max_new_tokens=4, samples=2))
    finally:
        configure({})
    assert acc == {"d": 0.0} and acc.ungraded == 6  # every sample failed, none ended the eval
    assert "raised on 6 of 6 samples" in caplog.text
