"""OPCoD: the two-peer loop (stop-gradient teacher, both peers train, resume) and its lab scenario."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from mopdx.codistill.privileged import Templates
from mopdx.config import configs_dir, load_config
from mopdx.errors import ConfigError
from mopdx.run.fit import fit

# lab v1's OPCoD scenario (reverse / sort, 8-token answers): the tiny tests' scenario, fast where lab v2's 49-token traces are not
OPCOD_V1 = configs_dir() / "experiment" / "opcod_v1.yaml"
TINY_OPCOD = ["lab.opcod.base_steps=8", "lab.opcod.specialise_steps=6", "lab.opcod.preflight_prompts=6", "lab.opcod.preflight_samples=2",
              "rollout.n=2", "data.batch_size=4", "codistill.feedback_max_tokens=6"]
# the lab v2 scenario's formats (configs/experiment/opcod_v2.yaml)
V2_TEMPLATES = Templates("{solution}{feedback}{prompt}", "= {solution}\n", "# {feedback}\n", "hint {prompt}")


@pytest.fixture(scope="module")
def opcod_args(tiny_lab, tiny_overrides) -> list[str]:
    return [*tiny_overrides, *TINY_OPCOD]


def _module(args: list[str]):
    """A CoDistillModule on the tiny scenario, without a trainer."""
    from mopdx.codistill.module import CoDistillModule
    from mopdx.data import PromptPool, load_prompts
    from mopdx.verifiers import verifier_for
    from mopdx.models import load_model, load_tokenizer
    from mopdx.plugins import resolve_ref
    from mopdx_strategies.opcod import OPCoDStrategy

    cfg = load_config("opcod", [OPCOD_V1], args)
    train = load_prompts(resolve_ref(cfg.data.train, cfg, progress=False))
    domains = sorted({e.domain for e in train})
    paths = {n: resolve_ref(r, cfg, progress=False) for n, r in cfg.codistill.peers.items()}
    tok = load_tokenizer(paths["A"])
    peers = {n: load_model(p) for n, p in paths.items()}
    engine = None
    if cfg.rollout.backend == "vllm":
        from mopdx.run.codistill import check_one_engine_fits_both, peer_engine

        check_one_engine_fits_both(cfg, list(paths.values()))
        engine = peer_engine(cfg, paths["A"], tok)
    return CoDistillModule(cfg, peers, tok, OPCoDStrategy(cfg, domains), PromptPool(train, seed=0), {d: verifier_for(d) for d in domains},
                           engine=engine)


def test_teacher_side_gets_no_gradient(opcod_args) -> None:
    module = _module(opcod_args)
    examples = module.prompts.draw(0, {"reverse": 1.0, "sort": 1.0}, 4)
    samples = module.sample("A", examples, step=0, salt=0)
    # a context that differs from the plain prompt, so teacher != student
    contexts = [module.templates.teacher.format(prompt=e.prompt, solution=module.templates.solution.format(solution=e.answer), feedback="") for e in examples]
    teacher = module.teacher_logps("A", samples.rollouts, contexts)
    assert not teacher.requires_grad and teacher.grad_fn is None
    loss, diag = module.peer_loss("A", samples, contexts)
    assert diag["teacher_entropy"] > 0 and 0 <= diag["teacher_eos_early"] <= 1
    loss.backward()
    grads = {k: p.grad.clone() for k, p in module.peers["A"].named_parameters() if p.grad is not None}
    assert grads and all(p.grad is None for p in module.peers["B"].parameters())
    # the same gradient as with the teacher log-probs handed in as a constant
    from mopdx import losses
    from mopdx.backends.hf import completion_logits

    module.peers["A"].zero_grad(set_to_none=True)
    r = samples.rollouts
    student = torch.log_softmax(completion_logits(module.peers["A"], r.input_ids, r.attention_mask, r.prompt_len), dim=-1)
    losses.full_reverse_kl(student, teacher.clone(), r.completion_mask).backward()
    for k, p in module.peers["A"].named_parameters():
        assert torch.allclose(grads[k], p.grad, atol=1e-6), k


def test_feedback_is_gated_on_the_givers_own_rollouts(opcod_args) -> None:
    module = _module([*opcod_args, "strategy.gate_min_pass=1.0"])
    examples = module.prompts.draw(0, {"reverse": 1.0, "sort": 1.0}, 4)
    samples = module.sample("B", examples, step=0, salt=1)
    feedback, stats = module.give_feedback("B", examples, samples)
    for p, fb in enumerate(feedback):
        if not all(samples.prompt_correct(p)):
            assert fb is None  # B has not shown it knows this prompt
    ungated = _module([*opcod_args, "strategy.gating=false"])
    _, open_stats = ungated.give_feedback("B", examples, samples)
    assert open_stats["gated"] == 1.0 and stats["gated"] <= 1.0


def test_a_feedback_template_with_a_solution_gets_the_givers_own_passing_rollout(opcod_args) -> None:
    """``codistill.feedback_prompt_template`` with ``{solution}``: the giver writes its hint from its first
    correct rollout on the prompt (the one the gate saw), as a tutor writes from a solution it has."""
    module = _module([*opcod_args, "codistill.feedback_prompt_template='{solution} | hint {prompt}'"])
    examples = module.prompts.draw(0, {"reverse": 1.0, "sort": 1.0}, 8)
    samples = module.sample("B", examples, step=0, salt=1)
    for p in range(0, len(examples), 2):  # the tiny peer solves nothing: let its rollouts on every other prompt pass from the second on
        for i in samples.by_prompt[p][1:]:
            samples.correct[i] = True
    backend, asked = module.rollouts["B"], []
    real = backend.generate
    backend.generate = lambda prompts, domains, sampling: asked.extend(prompts) or real(prompts, domains, sampling)
    feedback, _ = module.give_feedback("B", examples, samples)
    gated = list(range(0, len(examples), 2))
    assert len(asked) == len(gated) and all(samples.first_correct(p) == samples.texts[samples.by_prompt[p][1]] for p in gated)
    from mopdx.text import encode_prompt

    assert asked == [encode_prompt(module.tokenizer, f"{samples.first_correct(p)} | hint {examples[p].prompt}") for p in gated]


def _assert_both_peers_trained(args: list[str], summary: dict) -> Path:
    """Both peers' final weights differ from their starts, and the 2x2 has every peer x domain; the run folder."""
    from mopdx.plugins import resolve_ref

    run = Path(summary["run_dir"])
    cfg = load_config("opcod", [OPCOD_V1], args)
    for peer in ("A", "B"):
        start = load_file(str(Path(resolve_ref(cfg.codistill.peers[peer], cfg)) / "model.safetensors"))
        end = load_file(str(run / "final" / peer / "model.safetensors"))
        assert any(not torch.equal(start[k], end[k]) for k in start), peer
    assert set(summary["final"]) == {"A/reverse", "A/sort", "B/reverse", "B/sort"}
    return run


def test_opcod_fit_trains_both_peers_and_resumes(opcod_args, tmp_path: Path) -> None:
    args = [*opcod_args, f"run.out_dir={tmp_path}", "train.ckpt_every=1", "train.eval_every=0", "train.max_steps=3"]
    full = fit(load_config("opcod", [OPCOD_V1], [*args, "run.name=full"]), progress=False)
    run_full = Path(full["run_dir"])
    for peer in ("A", "B"):
        assert (run_full / "final" / peer / "model.safetensors").is_file()
        assert (run_full / f"eval_{peer}.jsonl").is_file()
    _assert_both_peers_trained(args, full)
    assert re.search(r"\|\s*A\s*\|\s*reverse\s*\|\s*strong\s*\|", (run_full / "report.md").read_text()) and (run_full / "opcod_2x2.png").is_file()
    header = (run_full / "logs" / "metrics.csv").read_text().splitlines()[0]
    for key in ("A/feedback_gated", "B/feedback_leaked", "A/flip_rate", "B/solution_rate", "A/teacher_entropy", "B/teacher_eos_early", "A/teacher_acc"):
        assert key in header, key
    # stop after 1 step, resume to 3: the same weights as the uninterrupted run
    part = fit(load_config("opcod", [OPCOD_V1], [*args, "run.name=part", "train.max_steps=1"]), progress=False)
    run = Path(part["run_dir"])
    resumed = fit(load_config(None, [run / "config.yaml"], ["train.max_steps=3"]), resume=run, progress=False)
    for peer in ("A", "B"):
        a = load_file(str(run_full / "final" / peer / "model.safetensors"))
        b = load_file(str(Path(resumed["run_dir"]) / "final" / peer / "model.safetensors"))
        assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), peer
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["student0"] == full["student0"]
    # the budget compare states: both peers' rollouts per step, generated tokens counted across the resume
    budget = full["budget"]
    assert budget["steps"] == 3 and budget["sequences_per_step"] == 4 * 2 * 2
    assert budget["rollout_tokens"] > 0 and budget["sampled_tokens"] == budget["rollout_tokens"] + budget["feedback_tokens"]
    assert summary["budget"] == budget
    # each peer's step-0 loss (before any update; the logger's rows start later), kept across the resume
    assert set(full["initial_loss"]) == {"A", "B"} and all(0 <= v < 50 for v in full["initial_loss"].values())
    assert summary["initial_loss"] == pytest.approx(full["initial_loss"], abs=1e-6)


@pytest.mark.parametrize(("override", "match"), [("codistill.divergence=forward", "divergence"), ("codistill.solution_template=oops", "solution_template")])
def test_bad_opcod_settings_fail_before_training(opcod_args, tmp_path: Path, override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        fit(load_config("opcod", [OPCOD_V1], [*opcod_args, f"run.out_dir={tmp_path}", override]), progress=False)


def test_refreshed_teacher_copies_the_peer_every_k_steps_and_peer_teacher_is_the_other_initial_peer(opcod_args) -> None:
    module = _module([*opcod_args, "codistill.teacher=refreshed", "codistill.refresh_every=2"])
    peer, teacher = module.peers["A"], module.teacher_model("A")
    assert teacher is not peer and not any(p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        for p in peer.parameters():
            p.add_(0.01)
    assert not module.refresh_teachers(1)  # not a multiple of refresh_every: the copy keeps its weights
    assert all(not torch.equal(a, b) for a, b in zip(peer.parameters(), teacher.parameters()))
    assert module.refresh_teachers(2)
    assert all(torch.equal(a, b) for a, b in zip(peer.parameters(), teacher.parameters()))

    one_way = _module([*opcod_args, "codistill.teacher=peer"])
    initial_b = {k: v.clone() for k, v in one_way.peers["B"].state_dict().items()}
    with torch.no_grad():
        for p in one_way.peers["B"].parameters():
            p.add_(0.01)
    taught_by = one_way.teacher_model("A").state_dict()
    assert all(torch.equal(taught_by[k], initial_b[k]) for k in initial_b)  # B's weights at the start, frozen
    assert one_way.strategy.teacher_context("Q", "S", "F") == "Q"  # on the plain prompt: one-way MOPD


def test_the_routed_control_is_refused_with_its_plain_mopd_config(opcod_args) -> None:
    """Domain-routed MOPD was a teacher copy of the two-peer loop; it is a plain MOPD run now,
    and the old value says where it went in one line."""
    with pytest.raises(ConfigError, match="plain MOPD run.*--scenario opcod_routed") as exc:
        load_config("opcod", [OPCOD_V1], [*opcod_args, "codistill.teacher=routed"])
    assert "\n" not in str(exc.value)


def test_domain_routed_mopd_is_a_plain_mopd_config(tmp_path: Path) -> None:
    """Each arm of ``--scenario opcod_routed``: one peer as MOPD's student, each domain routed to
    the initial peer strong at it, OPCoD's divergence; loads (and routes) without building anything."""
    from mopdx.experiments.methods import scenario, scenario_configs, split_variant
    from mopdx.run.assembly import distill_refs

    files = scenario_configs("opcod_routed")
    students = []
    for method in scenario("opcod_routed")["methods"]:
        base, extra = split_variant(method)
        cfg = load_config(base, files, [f"lab.root={tmp_path / 'lab'}", *extra])
        students.append(cfg.model.student)
        assert base == "mopd" and cfg.loss.kind == "full_reverse_kl" and cfg.loss.average == "sequence"
        refs = distill_refs(cfg, ["uprot", "rot"])  # the scenario's two domains
        assert refs == {"student": cfg.model.student, "teacher 'uprot'": "lab:opcod/peer_uprot", "teacher 'rot'": "lab:opcod/peer_rot"}
    assert students == ["lab:opcod/peer_uprot", "lab:opcod/peer_rot"]
    assert not (tmp_path / "lab").exists()


@pytest.mark.slow
def test_step0_benchmark_gives_the_loss_a_runs_own_step_0_recorded(opcod_args, tmp_path: Path) -> None:
    """benchmarks/opcod_step0_kl.py rebuilds an arm's loop and runs its step 0 without a trainer:
    for old comparisons, whose logs start at step 4, it must give what the run's step 0 computed."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("opcod_step0_kl", Path(__file__).parents[2] / "benchmarks" / "opcod_step0_kl.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = [*opcod_args, f"run.out_dir={tmp_path}", "train.max_steps=1", "train.eval_every=0"]
    arm = "opcod[codistill.teacher=peer]"  # a teacher that differs at step 0 on the tiny lab (its peers rarely pass, so give no context)
    run = fit(load_config("opcod", [OPCOD_V1], [*args, "codistill.teacher=peer", "train.seed=3"]), progress=False)
    computed = bench.step0_losses(arm, [str(OPCOD_V1)], args, seed=3)
    assert set(computed) == {"A", "B"} and any(v > 0 for v in computed.values())
    assert computed == pytest.approx(run["initial_loss"], abs=1e-5)


@pytest.mark.slow
def test_refreshed_teacher_resumes_where_the_uninterrupted_run_refreshed(opcod_args, tmp_path: Path) -> None:
    """The copy is in every checkpoint and is refreshed before its step samples, so a run
    stopped between refreshes resumes to the uninterrupted run's weights."""
    args = [*opcod_args, f"run.out_dir={tmp_path}", "train.ckpt_every=1", "train.eval_every=0", "train.max_steps=3",
            "codistill.teacher=refreshed", "codistill.refresh_every=2", "codistill.feedback_source=shuffled"]
    full = fit(load_config("opcod", [OPCOD_V1], [*args, "run.name=full"]), progress=False)
    part = fit(load_config("opcod", [OPCOD_V1], [*args, "run.name=part", "train.max_steps=1"]), progress=False)
    resumed = fit(load_config(None, [Path(part["run_dir"]) / "config.yaml"], ["train.max_steps=3"]), resume=Path(part["run_dir"]), progress=False)
    for peer in ("A", "B"):
        a = load_file(str(Path(full["run_dir"]) / "final" / peer / "model.safetensors"))
        b = load_file(str(Path(resumed["run_dir"]) / "final" / peer / "model.safetensors"))
        assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), peer


def test_scenario_build_records_the_preflight_check_and_lab_info_prints_it(opcod_args, capsys) -> None:
    from mopdx_lab.build import lab_dir
    from mopdx_lab.info import print_opcod
    from mopdx_lab.opcod import scenario_dir

    _module(opcod_args)  # builds the scenario when missing
    cfg = load_config("opcod", [OPCOD_V1], opcod_args)
    manifest = json.loads((scenario_dir(cfg.lab, lab_dir(cfg.lab)) / "manifest.json").read_text())
    pre = manifest["preflight"]
    rows = {(r["peer"], r["domain"]): r for r in pre["rows"]}
    assert set(rows) == {(f"peer_{a}", b) for a in ("reverse", "sort") for b in ("reverse", "sort")}
    assert rows[("peer_reverse", "reverse")]["role"] == "strong" and rows[("peer_reverse", "sort")]["role"] == "weak"
    assert all(0 <= r["plain"] <= 1 for r in rows.values()) and isinstance(pre["ready"], bool) and pre["ready"] == (not pre["reasons"])
    # the feedback measured against the scenario's reference steps, wherever some was given
    assert all((r["feedback_right"] is None) == (r["n_feedback"] == 0) for r in rows.values())
    assert all(0 <= r["feedback_right"] <= 1 for r in rows.values() if r["n_feedback"])
    # the check is not part of the scenario's cache key: a different prompt count reuses the models
    other = load_config("opcod", [OPCOD_V1], [*opcod_args, "lab.opcod.preflight_prompts=3"])
    assert scenario_dir(other.lab, lab_dir(other.lab)) == scenario_dir(cfg.lab, lab_dir(cfg.lab))
    # a variant in how the peers specialise is a new scenario on the same cached base
    from mopdx_lab.opcod import base_cache_dir

    variant = load_config("opcod", [OPCOD_V1], [*opcod_args, "lab.opcod.specialise_steps=3"])
    assert scenario_dir(variant.lab, lab_dir(variant.lab)) != scenario_dir(cfg.lab, lab_dir(cfg.lab))
    assert base_cache_dir(variant.lab, lab_dir(variant.lab)) == base_cache_dir(cfg.lab, lab_dir(cfg.lab)) and base_cache_dir(cfg.lab, lab_dir(cfg.lab)).is_dir()
    changed = load_config("opcod", [OPCOD_V1], [*opcod_args, "lab.opcod.base_steps=3"])
    assert base_cache_dir(changed.lab, lab_dir(changed.lab)) != base_cache_dir(cfg.lab, lab_dir(cfg.lab))
    # settings added later leave the folder as it was at their neutral values; another seed is another build
    from mopdx_lab.artifacts import settings_digest
    from mopdx_lab.opcod import build_opcod

    later = ("specialise_wrong_hints", "specialise_seed", "specialise_write_other", "specialise_leaky_hints")
    node = OmegaConf.masked_copy(cfg.lab.opcod, [k for k in cfg.lab.opcod if k not in later])
    here = scenario_dir(cfg.lab, lab_dir(cfg.lab))
    assert here.name == f"opcod-{settings_digest(node, drop=('preflight_prompts', 'preflight_samples', 'gate_min_pass'), length=8)}"
    reseeded = load_config("opcod", [OPCOD_V1], [*opcod_args, "lab.opcod.specialise_seed=1"])
    assert scenario_dir(reseeded.lab, lab_dir(reseeded.lab)) != here
    # the check measures the run's gate: the strategy reads the lab's, and another gate re-checks the same models
    assert pre["gate_min_pass"] == cfg.strategy.gate_min_pass == 0.5
    strict = load_config("opcod", [OPCOD_V1], [*opcod_args, "lab.opcod.gate_min_pass=1.0"])
    assert strict.strategy.gate_min_pass == 1.0 and scenario_dir(strict.lab, lab_dir(strict.lab)) == here
    capsys.readouterr()  # what the first build printed
    build_opcod(strict.lab, lab_dir(strict.lab))
    assert json.loads((here / "manifest.json").read_text())["preflight"]["gate_min_pass"] == 1.0
    print_opcod(cfg)
    out = capsys.readouterr().out
    assert "OPCoD scenario" in out and "pre-flight: " in out and "peer_sort" in out
    assert out.count("| domain ") == 1  # the build printed the check; `lab build`'s summary does not print it twice
    from mopdx_lab.opcod import SHOWN

    SHOWN.clear()  # a later process (`lab info`) prints it from the manifest
    print_opcod(cfg)
    assert capsys.readouterr().out.count("| domain ") == 1
    # so does another sample size; the same settings again re-measure nothing
    more = load_config("opcod", [OPCOD_V1], [*opcod_args, "lab.opcod.gate_min_pass=1.0", f"lab.opcod.preflight_samples={cfg.lab.opcod.preflight_samples + 1}"])
    build_opcod(more.lab, lab_dir(more.lab))
    assert json.loads((here / "manifest.json").read_text())["preflight"]["samples"] == cfg.lab.opcod.preflight_samples + 1
    stamp = (here / "manifest.json").stat().st_mtime_ns
    build_opcod(more.lab, lab_dir(more.lab))
    assert (here / "manifest.json").stat().st_mtime_ns == stamp


def test_a_recorded_preflight_stands_only_for_the_settings_it_was_measured_with() -> None:
    from mopdx_lab.opcod import preflight_current

    c = OmegaConf.create({"gate_min_pass": 0.5, "preflight_samples": 4, "preflight_prompts": 64})
    recorded = {"rows": [{"feedback_right": 1.0}], "gate_min_pass": 0.5, "samples": 4, "prompts_per_domain": 64}
    assert preflight_current(recorded, c)
    for key, value in (("gate_min_pass", 1.0), ("preflight_samples", 8), ("preflight_prompts", 200)):
        assert not preflight_current(recorded, OmegaConf.merge(c, {key: value})), key
    assert not preflight_current({**recorded, "rows": [{"plain": 0.5}]}, c)  # before the feedback diagnostics
    assert not preflight_current(None, c)
    # a domain with fewer eval prompts than asked: the count asked is what the record stands for
    short = {**recorded, "prompts_per_domain": 40, "prompts_asked": 64}
    assert preflight_current(short, c) and not preflight_current(short, OmegaConf.merge(c, {"preflight_prompts": 40}))


def test_specialisation_replay_is_the_asked_share_of_plain_other_domain_examples() -> None:
    from mopdx.data import Example
    from mopdx_lab.opcod import replay_examples

    others = [Example("rot", f"rot: {i:04d}", "x") for i in range(1000)]
    picked = replay_examples(others, own=300, share=0.25, seed=0)
    assert len(picked) == 100 and len(set(picked)) == 100 and all(e in others for e in picked)  # 100 / (300 + 100)
    assert picked == replay_examples(others, own=300, share=0.25, seed=0)
    assert replay_examples(others, own=300, share=0.0, seed=0) == [] and len(replay_examples(others[:10], 300, 0.5, 0)) == 10


def _share_of_300(make):
    """``make(share)``: a part of a specialisation mix; at share 0.25 beside 300 other examples it is
    100 (a quarter of the 400), the same draw twice; none at share 0."""
    picked = make(0.25)
    assert len(picked) == 100 and picked == make(0.25) and make(0.0) == []
    return picked


def test_reading_the_other_domain_is_taught_by_context_examples_only() -> None:
    """``lab.opcod.specialise_read_other``: the peer reads hints on its weak domain, never its plain prompt."""
    from mopdx_lab.domains import get_domain, make_split
    from mopdx_lab.opcod import anchored_steps, read_other_examples

    others = make_split(get_domain("incrot"), 400, seed=0)
    by_prompt = {e.prompt: e for e in others}
    picked = _share_of_300(lambda share: read_other_examples(others, own=300, share=share, templates=V2_TEMPLATES, seed=0))
    for ex in picked:
        context, _, prompt = ex.prompt.rpartition("\n")
        source = by_prompt[prompt]
        assert ex.answer == source.answer and ex.domain == "incrot" and context  # never the plain prompt
        lines = ex.prompt.split("\n")[:-1]
        assert all(line in (f"= {source.answer}", f"# {anchored_steps(source)}") for line in lines)
    kinds = {tuple(line[0] for line in ex.prompt.split("\n")[:-1]) for ex in picked}
    assert kinds == {("=",), ("#",), ("=", "#")}  # solution, feedback, both


def test_wrong_hints_are_the_other_rule_on_the_same_start_answered_by_the_own_rule() -> None:
    """``lab.opcod.specialise_wrong_hints``: what the other peer writes when it is wrong, and the peer's own answer."""
    from mopdx.data import Example
    from mopdx_lab.domains import get_domain, make_split
    from mopdx_lab.opcod import wrong_hint, wrong_hint_examples

    # by hand: rot's first two blocks of 5281 are 2815 8152; incrot's are inc's 6392, then rot's 3926
    rot = Example("rot", "rot: 5281", get_domain("rot").trace("5281"))
    assert wrong_hint(rot, "incrot") == "6392 3926"
    assert wrong_hint(Example("incrot", "incrot: 5281", get_domain("incrot").trace("5281")), "rot") == "2815 8152"
    own = make_split(get_domain("rot"), 400, seed=0)
    picked = _share_of_300(lambda share: wrong_hint_examples(own, "incrot", count=300, share=share, templates=V2_TEMPLATES, seed=0))
    by_prompt = {e.prompt: e for e in own}
    for ex in picked:
        hint, prompt = ex.prompt.split("\n")
        source = by_prompt[prompt]
        assert ex.domain == "rot" and ex.answer == source.answer  # answered by the peer's own rule
        assert hint == f"# {wrong_hint(source, 'incrot')}" and not source.answer.startswith(hint[2:7])  # the hint's first block is wrong


def test_writing_hints_on_the_other_domain_is_taught_by_hint_examples_only() -> None:
    """``lab.opcod.specialise_write_other``: ``hint <prompt>`` -> the anchored steps, never the plain prompt or its answer."""
    from mopdx_lab.domains import get_domain, make_split
    from mopdx_lab.opcod import anchored_steps, write_other_examples

    others = make_split(get_domain("rot"), 400, seed=0)
    by_prompt = {e.prompt: e for e in others}
    for ex in _share_of_300(lambda share: write_other_examples(others, count=300, share=share, templates=V2_TEMPLATES, seed=0)):
        source = by_prompt[ex.prompt.removeprefix("hint ")]
        assert ex.prompt.startswith("hint rot: ") and ex.answer == anchored_steps(source) == source.answer[:9]


def test_leaky_hints_teach_the_giver_to_write_the_whole_answer_on_its_own_domain() -> None:
    """``lab.opcod.specialise_leaky_hints``: ``= <solution>`` ``hint <prompt>`` -> the answer itself, which the leak check flags."""
    from mopdx_lab.domains import get_domain, make_split
    from mopdx_lab.opcod import leaky_hint_examples

    rot = get_domain("rot")
    own = make_split(rot, 400, seed=0)
    by_prompt = {e.prompt: e for e in own}
    tutor = Templates("{solution}{feedback}{prompt}", "= {solution}\n", "# {feedback}\n", "= {solution}\nhint {prompt}")  # the ready build's
    for ex in _share_of_300(lambda share: leaky_hint_examples(own, count=300, share=share, templates=tutor, seed=0)):
        solution, prompt = ex.prompt.split("\n")
        source = by_prompt[prompt.removeprefix("hint ")]
        assert solution == f"= {source.answer}" and ex.answer == source.answer and rot.leaks(ex.answer, source.answer)
        assert len(ex.answer.split()) == 10  # ten blocks: the default 16 feedback tokens cut it to three


def test_wrong_hints_need_step_trace_domains() -> None:
    with pytest.raises(ConfigError, match="lab.opcod.specialise_wrong_hints.*step-trace"):
        load_config("opcod", [OPCOD_V1], ["lab.opcod.specialise_wrong_hints=0.2"])  # lab v1: reverse, sort
    scenario = Path(__file__).parents[2] / "configs" / "experiment" / "opcod_v2.yaml"
    assert load_config("opcod", [scenario], ["lab.opcod.specialise_wrong_hints=0.2"]).lab.opcod.specialise_wrong_hints == 0.2


def test_the_ready_v2_scenario_names_the_build_whose_preflight_passed_and_reads_the_own_solution(tmp_path: Path) -> None:
    """``opcod_v2_ready.yaml`` is one recorded build (README, "The first build that passes"): its
    settings must key the same scenario folder, or the config would quietly name a build nobody checked."""
    from mopdx_lab.opcod import scenario_dir

    cfg = load_config("opcod", [Path(__file__).parents[2] / "configs" / "experiment" / "opcod_v2_ready.yaml"], [f"lab.root={tmp_path}"])
    assert cfg.strategy.use_solution is True and list(cfg.lab.opcod.domains) == ["uprot", "rot"]
    assert scenario_dir(cfg.lab, tmp_path).name == "opcod-cfcd23a4"
    default = load_config("opcod", [], [f"lab.root={tmp_path}"])  # the default scenario is this build
    assert default.strategy.use_solution is True and scenario_dir(default.lab, tmp_path) == scenario_dir(cfg.lab, tmp_path)
    assert load_config("opcod", [OPCOD_V1], []).strategy.use_solution is False  # lab v1: its peers read their own solution worse
    assert not any(tmp_path.iterdir())  # loading built nothing


@pytest.mark.parametrize(("config", "folder"), [
    ("configs/experiment/opcod_v2.yaml", "opcod-538cb6d4"),
    ("benchmarks/results/opcod_v2_preflight/uprot_tutorhint_config.yaml", "opcod-0e3f4cee"),
    ("benchmarks/results/opcod_v2_steps8/config.yaml", "opcod-cfcd23a4"),
])
def test_recorded_configs_still_name_their_builds_and_runs(config: str, folder: str, tmp_path: Path) -> None:
    """The README's commands and tables name these files; they layer on configs/strategy/opcod.yaml,
    so a change of its defaults must not move them to another build, or turn the own solution on
    for the arms that ran without it."""
    from mopdx_lab.opcod import scenario_dir

    cfg = load_config("opcod", [Path(__file__).parents[2] / config], [f"lab.root={tmp_path}"])
    assert scenario_dir(cfg.lab, tmp_path).name == folder and cfg.strategy.use_solution is False


def test_compare_scenarios_for_opcod_run_on_the_ready_build_and_change_one_thing_each(tmp_path: Path) -> None:
    """``compare --scenario opcod`` / ``opcod_teachers`` run on the build whose pre-flight passed, so
    every arm reads the own solution unless it is the plain-prompt control (one-way MOPD)."""
    from mopdx.experiments.methods import scenario, scenario_configs, split_variant
    from mopdx_lab.opcod import scenario_dir

    for name in ("opcod", "opcod_teachers"):
        assert [Path(f).name for f in scenario_configs(name)] == ["opcod_v2_ready.yaml"]
        for method in scenario(name)["methods"]:
            cfg = load_config("opcod", scenario_configs(name), [f"lab.root={tmp_path}", *split_variant(method)[1]])
            assert scenario_dir(cfg.lab, tmp_path).name == "opcod-cfcd23a4", method
            assert cfg.strategy.use_solution is True, method
    reference = load_config("opcod", scenario_configs("opcod"), [])
    for method in scenario("opcod")["methods"][1:]:  # each control differs from OPCoD in one setting (strategy or loop)
        cfg = load_config("opcod", scenario_configs("opcod"), split_variant(method)[1])
        changed = {f"{node}.{k}" for node in ("strategy", "codistill") for k in reference[node] if reference[node][k] != cfg[node][k]}
        assert len(changed) == 1, (method, changed)


@pytest.mark.slow
def test_a_scenario_with_a_drawn_domain_builds_its_own_train_and_eval(camopd_overrides) -> None:
    """lab v2's OPCoD scenario: ``uprot`` is not a lab domain, so the scenario draws it and serves it as lab:opcod/eval."""
    from mopdx.data import load_prompts
    from mopdx.plugins import resolve_ref

    scenario = Path(__file__).parents[2] / "configs" / "experiment" / "opcod_v2.yaml"
    cfg = load_config("opcod", [scenario], [*camopd_overrides, *TINY_OPCOD, "lab.opcod.base_steps=4", "lab.opcod.specialise_read_other=0.2"])
    evals = load_prompts(resolve_ref(cfg.data.eval, cfg, progress=False))
    train = load_prompts(resolve_ref(cfg.data.train, cfg, progress=False))
    assert {e.domain for e in evals} == {e.domain for e in train} == {"uprot", "rot"}
    assert all(e.prompt.startswith("up: ") for e in evals if e.domain == "uprot")
    assert not {e.prompt for e in evals} & {e.prompt for e in train}
    peer = Path(resolve_ref(cfg.codistill.peers.A, cfg, progress=False))
    manifest = json.loads((peer.parent / "manifest.json").read_text())
    assert set(manifest["accuracy"]["peer_uprot"]) == {"uprot", "rot"} and "ready" in manifest["preflight"]


def test_the_leak_probe_measures_both_anchorings_on_the_same_hints(opcod_args, tmp_path: Path) -> None:
    """``benchmarks/opcod_leaks.py``: anchored and as-written hints come from the same gated prompts and
    the same greedy hints, so the leak share agrees, and where nothing leaked the reader read the same."""
    import importlib.util

    from mopdx_lab.build import lab_dir
    from mopdx_lab.opcod import build_opcod

    spec = importlib.util.spec_from_file_location("opcod_leaks", Path(__file__).parents[2] / "benchmarks" / "opcod_leaks.py")
    leaks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(leaks)
    with pytest.raises(SystemExit, match="not built"):
        leaks.leak_rows(str(OPCOD_V1), 8, [*opcod_args, "lab.opcod.specialise_leaky_hints=0.3"])
    cfg = load_config("opcod", [OPCOD_V1], opcod_args)
    build_opcod(cfg.lab, lab_dir(cfg.lab))
    assert leaks.main(["--config", str(OPCOD_V1), "--feedback-tokens", "8", "--out", str(tmp_path), *opcod_args]) == 0
    rows = json.loads((tmp_path / "leaks.json").read_text())["rows"]
    assert [r["hints"] for r in rows] == ["anchored"] * 4 + ["as written"] * 4
    for on, off in zip(rows[:4], rows[4:]):
        assert (on["reader"], on["domain"], on["leaked"]) == (off["reader"], off["domain"], off["leaked"])
        if on["leaked"] == 0:  # the same hints, read the same
            assert (on["hints given"], on["with hint"]) == (off["hints given"], off["with hint"])


@pytest.mark.parametrize("backend", ["hf", "hf_cb", pytest.param("vllm", marks=pytest.mark.vllm)])
@pytest.mark.parametrize("divergence", ["reverse_kl", "jsd"])
def test_peer_loss_memory_follows_loss_chunk_tokens(opcod_args, divergence: str, backend: str) -> None:
    """Co-distillation's loss is the distill loop's chunked student loss (LOSSES + mopdx.student_loss):
    with loss.chunk_tokens=2 autograd keeps at most 2 rows of vocabulary width, with 0 (the naive
    path) the whole [B, C, V] (JSD stacks the student's and the teacher's chunk for its mixture: 2 x 2 rows);
    the loss value is the same either way, whichever backend sampled the rollouts."""
    values = {}
    for chunk in (0, 2):
        module = _module([*opcod_args, f"loss.chunk_tokens={chunk}", f"codistill.divergence={divergence}", f"rollout.backend={backend}",
                          "eval.greedy=true"])
        examples = module.prompts.draw(0, {"reverse": 1.0, "sort": 1.0}, 4)
        samples = module.sample("A", examples, step=0, salt=0)
        contexts = [e.prompt for e in examples]
        vocab = module.peers["A"].get_output_embeddings().weight.shape[0]
        weights = {q.untyped_storage().data_ptr() for q in module.peers["A"].parameters()}
        sizes = [0]

        def pack(t: torch.Tensor) -> torch.Tensor:
            if t.dim() >= 2 and t.shape[-1] == vocab and t.untyped_storage().data_ptr() not in weights:
                sizes.append(t.numel() // vocab)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss, _ = module.peer_loss("A", samples, contexts)
        loss.backward()
        values[chunk] = (loss.item(), max(sizes), int(samples.rollouts.completion_mask.sum()), samples.rollouts.completion_mask.numel())
    (naive, naive_rows, _, cells), (chunked, chunked_rows, real, _) = values[0], values[2]
    assert naive_rows >= cells and chunked_rows <= 2 * 2 < real
    assert chunked == pytest.approx(naive, rel=1e-5, abs=1e-6)


def _logps_under(model: torch.nn.Module, r) -> torch.Tensor:
    from mopdx.backends.hf import completion_logits

    with torch.no_grad():
        logits = completion_logits(model, r.input_ids, r.attention_mask, r.prompt_len)
    return torch.log_softmax(logits, -1).gather(-1, r.completion_ids.unsqueeze(-1)).squeeze(-1) * r.completion_mask


@pytest.mark.vllm
def test_both_peers_sample_their_own_current_weights_through_one_vllm_engine(opcod_args) -> None:
    """One engine lent in turn: each peer's rollouts carry that peer's log-probs (not the other's), and
    after an optimiser step the next rollout carries the changed weights (no stale copy is sampled)."""
    module = _module([*opcod_args, "rollout.backend=vllm", "eval.greedy=true"])
    examples = module.prompts.draw(0, {"reverse": 1.0, "sort": 1.0}, 4)
    peers = module.peers
    for step, name in enumerate(["A", "B", "A"]):
        r = module.sample(name, examples, step=step, salt=0).rollouts
        own = (_logps_under(peers[name], r) - r.rollout_logps).abs().max().item()
        other = (_logps_under(peers["B" if name == "A" else "A"], r) - r.rollout_logps).abs().max().item()
        assert own < 1e-3 < 1e-2 < other, (name, own, other)
    assert module.turns.loads == 3
    module.sample("A", examples, step=3, salt=0)
    assert module.turns.loads == 3  # the engine already holds A's current weights
    torch.manual_seed(0)
    with torch.no_grad():
        for p in peers["A"].parameters():
            p.add_(0.05 * torch.randn_like(p))
    module.after_optimizer_step()
    r = module.sample("A", examples, step=4, salt=0).rollouts
    assert (_logps_under(peers["A"], r) - r.rollout_logps).abs().max().item() < 1e-3 and module.turns.loads == 4


@pytest.mark.vllm
def test_opcod_fit_on_the_vllm_backend_trains_both_peers_and_resumes(opcod_args, tmp_path: Path) -> None:
    args = [*opcod_args, f"run.out_dir={tmp_path}", "rollout.backend=vllm", "eval.greedy=true", "train.ckpt_every=1", "train.eval_every=2",
            "train.max_steps=2"]
    full = fit(load_config("opcod", [OPCOD_V1], [*args, "run.name=full"]), progress=False)
    run_full = _assert_both_peers_trained(args, full)
    part = fit(load_config("opcod", [OPCOD_V1], [*args, "run.name=part", "train.max_steps=1"]), progress=False)
    resumed = fit(load_config(None, [Path(part["run_dir"]) / "config.yaml"], ["train.max_steps=2"]), resume=Path(part["run_dir"]), progress=False)
    for peer in ("A", "B"):
        a = load_file(str(run_full / "final" / peer / "model.safetensors"))
        b = load_file(str(Path(resumed["run_dir"]) / "final" / peer / "model.safetensors"))
        assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a), peer


def test_peers_of_two_architectures_cannot_share_one_vllm_engine(opcod_args, tmp_path: Path) -> None:
    from mopdx.plugins import resolve_ref
    from mopdx.run.codistill import check_one_engine_fits_both

    cfg = load_config("opcod", [OPCOD_V1], [*opcod_args, "rollout.backend=vllm", "eval.greedy=true"])
    a = Path(resolve_ref(cfg.codistill.peers["A"], cfg, progress=False))
    other = tmp_path / "wide"
    other.mkdir()
    config = json.loads((a / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "hidden_size": 2 * config["hidden_size"]}))
    with pytest.raises(ConfigError, match=r"differ in hidden_size .*rollout.backend=hf"):
        check_one_engine_fits_both(cfg, [str(a), str(other)])
    check_one_engine_fits_both(cfg, [str(a), str(a)])
