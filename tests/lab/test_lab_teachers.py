"""The lab's teacher scenarios for issue 42: broad teachers for panels, and teachers on a second tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

TINY_TEACHERS = [
    "lab.panel.steps=2", "lab.panel.check_every=1", "lab.panel.prompts=4", "lab.panel.group=2",
    "lab.xtok.steps=4", "lab.xtok.check_every=2", "lab.xtok.prompts=8", "lab.xtok.group=2",
    "lab.targets.check_prompts=8", "lab.targets.check_samples=1",
]


def test_second_tokenizer_keeps_a_space_with_its_digit_and_round_trips() -> None:
    from mopdx_lab.domains import get_domain, make_split
    from mopdx_lab.tokenizer import build_tokenizer

    corpus = [f"{e.prompt} {e.answer}" for e in make_split(get_domain("inc"), 200, seed=0)]
    first, second = build_tokenizer(corpus, 300), build_tokenizer(corpus, 300, second=True)
    text = "inc: 6426 7537 8648"
    assert first.tokenize(" 7537") == ["Ġ", "7", "5", "3", "7"]
    assert second.tokenize(" 7537") == ["Ġ7", "5", "3", "7"]  # one teacher token over two student tokens
    for tok in (first, second):
        assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text
    assert second.tokenize("inc:") == ["inc:"] and first.tokenize("inc:") == ["inc", ":"]  # and the reverse in a prompt


def test_transplant_maps_each_token_to_the_source_rows_it_spells() -> None:
    import torch
    from omegaconf import OmegaConf

    from mopdx_lab.config import LabConfig
    from mopdx_lab.domains import get_domain, make_split
    from mopdx_lab.model_factory import TinyModelSpec, build_tiny_qwen2
    from mopdx_lab.tokenizer import build_tokenizer
    from mopdx_lab.xtok import transplant

    corpus = [f"{e.prompt} {e.answer}" for e in make_split(get_domain("inc"), 200, seed=0)]
    first, second = build_tokenizer(corpus, 300), build_tokenizer(corpus, 300, second=True)
    lab = OmegaConf.structured(LabConfig(model=TinyModelSpec(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)))
    source = build_tiny_qwen2(lab.model, first, seed=3)
    model = transplant(source, first, second, lab)
    emb, head = model.model.embed_tokens.weight, model.lm_head.weight
    s_emb, s_head = source.model.embed_tokens.weight, source.lm_head.weight
    v1, v2 = first.get_vocab(), second.get_vocab()
    assert torch.equal(emb[v2["5"]], s_emb[v1["5"]]) and torch.equal(head[v2["5"]], s_head[v1["5"]])  # a token of both
    assert torch.equal(emb[v2["inc:"]], s_emb[v1[":"]]) and torch.equal(head[v2["inc:"]], s_head[v1["inc"]])
    assert torch.equal(emb[v2["Ġ7"]], s_emb[v1["7"]])  # what the source saw last
    assert torch.equal(head[v2["Ġ7"]], s_head[v1["Ġ"]])  # what the source predicts first
    assert torch.equal(model.model.layers[0].mlp.up_proj.weight, source.model.layers[0].mlp.up_proj.weight)


@pytest.fixture(scope="module")
def teacher_overrides(tmp_path_factory: pytest.TempPathFactory, tiny_overrides: list[str]) -> list[str]:
    root = tmp_path_factory.mktemp("teachers_lab")
    return [*tiny_overrides, f"lab.root={root}", "lab.domains=[inc,rot]", *TINY_TEACHERS]


def test_panel_and_xtok_scenarios_build_resolve_and_train(teacher_overrides: list[str], tmp_path: Path) -> None:
    from mopdx.cli import main
    from mopdx.config import load_config
    from mopdx.models import load_tokenizer
    from mopdx_lab.refs import resolve_ref

    cfg = load_config("mopd", [], teacher_overrides)
    broad = Path(resolve_ref("lab:panel/broad_inc", cfg.lab, progress=False))
    other = Path(resolve_ref("lab:xtok/teacher_rot", cfg.lab, progress=False))
    stage1 = Path(resolve_ref("lab:stage1", cfg.lab, progress=False))
    info = json.loads((broad / "lab_info.json").read_text())
    assert info["role"] == "broad" and info["checks"] and info["targets"]["missed"]  # a 2-step tiny RFT reaches no 0.8
    manifest = json.loads((broad.parent / "manifest.json").read_text())
    assert set(manifest["teachers"]) == {"inc", "rot"} and set(manifest["teachers"]["inc"]["initial_kl"]) == {"broad", "sharp"}
    xman = json.loads((other.parent / "manifest.json").read_text())
    row = xman["teachers"]["rot"]
    assert set(row["initial_kl"]) == {"same", "cross"} and set(row["accuracy"]) == {"source", "xtok"} and row["steps"] >= 2
    assert load_tokenizer(other).get_vocab() != load_tokenizer(stage1).get_vocab()
    # each scenario's config trains on them: panels through the mixture, the second tokenizer through the alignment
    for config in ("configs/experiment/panel_lab.yaml", "configs/experiment/xtok_lab.yaml"):
        out = tmp_path / Path(config).stem
        assert main(["fit", "--strategy", "mopd", "--config", config, *teacher_overrides, f"run.out_dir={out}",
                     "train.max_steps=2", "train.eval_every=2", "eval.samples=1", "--quiet"]) == 0
        (summary,) = out.glob("*/summary.json")
        assert json.loads(summary.read_text())["steps"] == 2


def test_xtok_scenario_with_a_kind_that_needs_the_full_distribution_is_refused_at_load(teacher_overrides: list[str]) -> None:
    from mopdx.config import load_config
    from mopdx.errors import ConfigError

    with pytest.raises(ConfigError, match="kind"):
        load_config("mopd", ["configs/experiment/xtok_lab.yaml"], [*teacher_overrides, "loss.kind=topk"])


def test_a_model_folder_tokenises_as_its_tokenizer_json_says(tmp_path: Path) -> None:
    """transformers would load a Qwen2 folder with Qwen2Tokenizer, whose own pre-tokenizer splits
    ``Ġ7`` into ``Ġ 7``: the second-tokenizer teacher must see the spellings it was trained on."""
    from mopdx.models import load_tokenizer
    from mopdx_lab.domains import get_domain, make_split
    from mopdx_lab.model_factory import TinyModelSpec, build_tiny_qwen2
    from mopdx_lab.tokenizer import build_tokenizer

    corpus = [f"{e.prompt} {e.answer}" for e in make_split(get_domain("inc"), 200, seed=0)]
    second = build_tokenizer(corpus, 300, second=True)
    model = build_tiny_qwen2(TinyModelSpec(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64), second)
    model.save_pretrained(tmp_path)
    second.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    text = "inc: 6426 7537"
    assert loaded.tokenize(text) == second.tokenize(text) == ["inc:", "Ġ6", "4", "2", "6", "Ġ7", "5", "3", "7"]
    assert loaded.apply_chat_template([{"role": "user", "content": text}], tokenize=False) == second.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False)
    assert (loaded.eos_token, loaded.pad_token, loaded.padding_side) == ("<|im_end|>", "<|endoftext|>", "left")
