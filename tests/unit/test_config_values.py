"""Every config field's valid edges and invalid values, checked by ``load_config`` alone.

Why a table: values the types admit but a run cannot use (``rollout.top_k=-1``,
``train.precision=bogus``) used to pass silently or fail minutes later in a lab build
or inside Lightning.  ``test_every_field_has_a_table_entry`` walks every leaf of the
resolved config of each strategy, so a new field cannot land without its cases.
Nothing here builds the lab or loads a model: the lab root must stay absent.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mopdx.config import configs_dir, load_config
from mopdx.errors import ConfigError

STRATEGIES = ("mopd", "camopd", "cascade", "opcod")
BOOL = (["true", "false"], ["maybe"])
POS_INT = (["1"], ["0", "-1"])
NONNEG_INT = (["0", "1"], ["-1"])
POSITIVE = (["1e-9", "100"], ["0", "-1", "inf", "nan"])
NONNEG = (["0", "1e9"], ["-0.1", "inf", "nan"])
UNIT_OPEN_CLOSED = (["1", "1e-6"], ["0", "1.5", "-0.1"])  # (0, 1]
UNIT_OPEN = (["0.01", "0.99"], ["0", "1", "nan"])  # (0, 1)
SEED = (["0", "4294967295"], ["-1", "4294967296"])
REF = (["lab:stage1", "/some/folder"], ["''", "lab:nope"])
GAPS = (["abs", "positive", "negative", "signed"], ["absolute", "''"])

# Keys outside ``strategy`` (checked under mopd).  Values are what follows ``key=``;
# for the dict-valued keys in DICT_KEYS they are ``<child>=<value>``.
COMMON: dict[str, tuple[list[str], list[str]]] = {
    "model.student": REF,
    "model.teachers": (["add=/some/folder", "math=lab:stage1", "add.sharp=lab:stage1"], ["add=''", "add=lab:nope", "add.sharp=lab:nope"]),
    # a combination names a panel: alone (no panel) it is refused; with one, in test_teacher_panels_are_checked_before_any_model_loads
    "model.combine": ([], ["add.rule=mixture", "add.rule=vote"]),
    "model.cross_tokenizer": BOOL,
    "model.dtype": (["float32", "bfloat16", "float16"], ["fp32", "''"]),
    "model.initial_kl_warn": NONNEG,
    "model.teacher_backend": (["hf", "vllm"], ["vLLM", "''"]),
    "data.train": (["lab:train", "/data/train.jsonl"], ["''", "lab:nope"]),
    "data.eval": (["lab:eval", "/data/eval.jsonl"], ["''", "lab:nope"]),
    "data.domain_ratios": (["add=1", "sort=1e-6"], ["add=-1", "add=0", "math=1", "add=inf"]),
    "data.batch_size": (["1"], ["0", "-1", "1.5", "lots"]),  # the last two: wrong types (schema)
    "data.eval_per_domain": POS_INT,
    "data.fields": (["prompt=question", "answer=final_answer"], ["question=prompt", "prompt=''"]),
    "data.verifiers": (["math=math", "qa=choice", "code=code", "x=exact", "n=numeric"], ["math=nope", "x=no_such_module_xyz:fn", "x=mopdx.data:nothing"]),
    "data.system_prompts": (["math=Think step by step.", "qa=''"], []),
    "data.chat_template_kwargs": (["enable_thinking=false"], []),
    "data.stop": (["[END]", "['</answer>','Question:']", "[]"], ["['']"]),
    "data.max_prompt_tokens": NONNEG_INT,
    "data.long_prompts": (["drop", "refuse"], ["truncate", "''"]),
    "rollout.backend": (["hf", "hf_cb", "vllm"], ["sglang"]),
    "rollout.n": POS_INT,
    "rollout.max_new_tokens": POS_INT,
    "rollout.temperature": POSITIVE,
    "rollout.top_p": UNIT_OPEN_CLOSED,
    "rollout.top_k": NONNEG_INT,
    "rollout.sync_every": POS_INT,
    "rollout.overlap_chunk": NONNEG_INT,
    "hf_cb.page_size": NONNEG_INT,
    "hf_cb.num_blocks": NONNEG_INT,
    "hf_cb.max_batch_tokens": NONNEG_INT,
    "hf_cb.cuda_graphs": BOOL,
    "vllm.student_gpu_memory_utilization": (["1", "0.01"], ["0", "1.01"]),
    "vllm.teacher_gpu_memory_utilization": (["1", "0.01"], ["0", "1.01"]),
    "vllm.max_model_len": (["0", "4096"], ["-1"]),
    "vllm.enforce_eager": BOOL,
    "vllm.cpu_kvcache_gib": POS_INT,
    "vllm.sleep_teachers": BOOL,
    "remote.timeout_s": POSITIVE,
    "remote.retries": POS_INT,
    "remote.backoff_s": NONNEG,
    "remote.batch_size": POS_INT,
    "remote.in_flight": POS_INT,
    "loss.kind": (["pg", "topk", "full_reverse_kl", "forward_kl", "jsd"], ["mse", "''"]),
    "loss.adv_clip": POSITIVE,
    "loss.adv_baseline": (["none", "mean"], ["median"]),
    "loss.topk": POS_INT,
    "loss.topk_tail": BOOL,
    "loss.jsd_beta": UNIT_OPEN,
    "loss.is_clip": (["null", "1", "0.01"], ["0", "-1", "inf"]),
    "loss.teacher_temperature": POSITIVE,
    "loss.average": (["sequence", "token"], ["batch"]),
    "loss.teacher_weight": (["0.5", "1e9"], ["-0.1", "inf", "nan"]),
    "loss.reward_weight": (["0"], ["-0.1", "inf", "nan"]),  # > 0 needs rollout.n >= 2: test_advantage_sources
    "loss.reward_std": BOOL,
    "loss.reward_sign": (["both", "negative", "positive"], ["neg", "''"]),
    "loss.chunk_tokens": (["0", "1024"], ["-1", "2.5"]),
    "rollout.sampler": (["generate", "keyed"], ["gumbel", "''"]),
    "eval.sampler": (["generate", "keyed"], ["gumbel"]),
    "optim.lr": POSITIVE,
    "optim.weight_decay": NONNEG,
    "optim.warmup_steps": NONNEG_INT,
    "optim.schedule": (["constant", "cosine"], ["linear"]),
    "optim.min_lr_ratio": (["0", "1"], ["-0.1", "1.1"]),
    "optim.grad_clip": (["0", "1"], ["-1", "inf"]),
    "optim.betas": (["[0,0]", "[0.9,0.999]"], ["[2,3]", "[0.9]", "[0.9,1.0]", "[-0.1,0.9]", "[0.9,0.98,0.9]"]),
    "train.max_steps": POS_INT,
    "train.seed": SEED,
    "train.eval_every": NONNEG_INT,
    "train.ckpt_every": NONNEG_INT,
    "train.log_every": POS_INT,
    "train.accelerator": (["auto", "cpu", "gpu", "cuda", "mps"], ["tpu", "''"]),
    "train.precision": (["32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true", "64"], ["bogus", "fp16", "8"]),
    "train.devices": (["1"], ["0", "-1", "2.5"]),  # > 1 with the multi-process checks: test_multiprocess_settings_are_checked
    "train.num_nodes": (["1"], ["0"]),
    "train.parallel": (["auto", "ddp"], ["deepspeed", "''"]),  # fsdp: test_fsdp_needs_a_gpu
    "train.loggers": (["[csv]", "[csv,tensorboard]", "[]"], ["[comet]", "[csv,csv]"]),
    "train.wandb_project": (["mopdx"], ["''"]),
    "train.wandb_offline": BOOL,
    "train.mlflow_tracking_uri": (["''", "file:/tmp/mlruns", "http://127.0.0.1:5000"], ["' file:/x'"]),
    "train.mlflow_experiment": (["mopdx"], ["''"]),
    "train.threads": NONNEG_INT,
    "train.keep_checkpoints": BOOL,
    "eval.max_new_tokens": POS_INT,
    "eval.batch_size": POS_INT,
    "eval.greedy": BOOL,
    "eval.samples": POS_INT,
    "eval.temperature": POSITIVE,
    "eval.seed": SEED,
    "eval.groups": (["general=[add,reverse]", "one=[sort]"], ["general=[]", "general=[add,add]", "general=['']"]),
    "baseline.merge_scale": (["-1", "0", "2"], ["inf", "nan"]),
    "baseline.offpolicy_temperature": POSITIVE,
    "baseline.offpolicy_verified_only": BOOL,
    "baseline.rl_group": (["2", "16"], ["1", "0", "2.5"]),
    "run.out_dir": (["runs", "/tmp/somewhere"], ["''"]),
    "run.name": (["null", "my-run"], ["a/b", ".."]),
    "lab.root": (["relative/lab"], ["''"]),
    "lab.domains": (["[add,reverse,sort]", "[sort,reverse,add]"], ["[]", "[math]", "[add,reverse,sort,sort]"]),
    "lab.seed": SEED,
    "lab.vocab_size": (["259", "4096"], ["258", "0"]),
    "lab.n_train": POS_INT,
    "lab.n_eval": POS_INT,
    "lab.model.hidden_size": (["8", "256"], ["0", "6", "4"]),
    "lab.model.num_layers": POS_INT,
    "lab.model.num_heads": (["2", "64"], ["0", "3", "128"]),
    "lab.model.num_kv_heads": (["1", "4"], ["0", "3"]),
    "lab.model.intermediate_size": POS_INT,
    "lab.model.max_position_embeddings": POS_INT,
    "lab.model.lm_head_std": (["0", "1"], ["-0.1", "inf"]),
    "lab.stage1_steps": POS_INT,
    "lab.stage1_easy_only": BOOL,
    "lab.stage1_lr": POSITIVE,
    "lab.stage1_noise": (["0", "0.5", "1"], ["-0.1", "1.5", "nan"]),
    "lab.stage1_noise_steps": (["0", "600"], ["-1", "2.5"]),
    "lab.stage1_stop_loss": (["0", "0.05"], ["-0.1", "nan"]),
    "lab.stage2_steps": POS_INT,
    "lab.stage2_lr": POSITIVE,
    "lab.batch_size": POS_INT,
    "lab.threads": NONNEG_INT,
    "lab.max_new_tokens": POS_INT,
    "lab.stage2_prompts": POS_INT,
    "lab.stage2_method": (["rft", "rl", "sft"], ["grpo"]),
    "lab.rft.rounds": POS_INT,
    "lab.rft.prompts": POS_INT,
    "lab.rft.group": POS_INT,
    "lab.rft.steps": POS_INT,
    "lab.rft.lr": POSITIVE,
    "lab.stage2_group": (["2", "8"], ["1", "0"]),
    "lab.regime.kl_min": (["0", "0.1"], ["-0.1", "inf", "0.5"]),  # 0.5 > kl_max
    "lab.regime.kl_max": (["0.2", "5"], ["-1", "inf", "0.01"]),  # 0.01 < kl_min
    "lab.regime.min_gap": (["0", "0.15", "-0.5"], ["2", "nan"]),
    "lab.regime.min_student": (["0", "0.3"], ["1.5", "-0.1", "0.31"]),  # 0.31: above lab.targets.student_band's floor
    "lab.targets.check_every": NONNEG_INT,
    "lab.targets.check_prompts": POS_INT,
    "lab.targets.check_samples": POS_INT,
    "lab.targets.learned": UNIT_OPEN_CLOSED,
    "lab.targets.specialist": UNIT_OPEN_CLOSED,
    "lab.targets.specialist_every": NONNEG_INT,
    # [0.1, 0.5]: floor under lab.regime.min_student; [0.3, 0.9]: no room for lab.regime.min_gap above it
    "lab.targets.student_band": (["[0.3,0.6]", "[0.2,0.85]"], ["[0.6,0.3]", "[0.3]", "[0.1,0.5]", "[0.3,0.9]", "[a,b]"]),
    "lab.allow_outside_regime": BOOL,
    "lab.camopd.recovery_domains": (["[rot,inc]", "[inc,rot,add]"], ["[]", "[math]", "[rot,rot]", "[rot,dec]", "[inc]"]),  # [inc]: replay of rot
    "lab.camopd.review_domain": (["dec", "sort"], ["inc", "math", "''"]),
    "lab.camopd.general_method": (["rft", "sft"], ["rl", "''"]),
    "lab.camopd.general_steps": POS_INT,
    "lab.camopd.general_lr": POSITIVE,
    "lab.camopd.general_prompts": POS_INT,
    "lab.camopd.general_group": POS_INT,
    "lab.camopd.specialise_steps": POS_INT,
    "lab.camopd.specialise_lr": POSITIVE,
    "lab.camopd.replay": (["rot=0", "inc=0.5"], ["rot=1", "inc=-0.1", "inc=nan", "dec=0.1", "rot=0.996"]),  # 0.996 + inc's 0.005 >= 1
    "lab.camopd.review_train": POS_INT,
    "lab.camopd.proxy": (["easy", "hard", "all"], ["medium", "''"]),
    "lab.camopd.proxy_template": (["''", "'{tag}> {input}'", "'{input} {tag}'"], ["'{tag}> '", "'{tag} {input} {answer}'", "'{tag} {input'"]),
    "lab.camopd.preflight_estimator": (["expected", "sampled"], ["mean", "''"]),
    "lab.camopd.mix": (["inc=0.5", "inc=0"], ["inc=-1", "inc=nan", "inc=inf"]),
    "lab.camopd.preflight_steps": NONNEG_INT,
    "lab.camopd.preflight_prompts": (["2"], ["1", "0"]),
    "lab.camopd.preflight_max_cos": (["-0.1", "0"], ["-2", "2", "nan"]),
    "lab.opcod.domains": (["[reverse,sort]", "[add,sort]"], ["[add]", "[add,add]", "[add,math]", "[add,reverse,sort]"]),
    "lab.opcod.base_steps": POS_INT,
    "lab.opcod.preflight_prompts": (["0", "64"], ["-1", "1.5"]),
    "lab.opcod.preflight_samples": POS_INT,
    "lab.opcod.base_lr": POSITIVE,
    "lab.opcod.specialise_steps": POS_INT,
    "lab.opcod.specialise_lr": POSITIVE,
    "lab.opcod.specialise_replay": (["0", "0.5"], ["1", "-0.1"]),
    "lab.opcod.specialise_read_other": (["0", "0.2"], ["1", "-0.1"]),
    # 0.2 is refused on the default scenario's domains (reverse, sort): a wrong hint needs step traces
    "lab.opcod.specialise_wrong_hints": (["0"], ["1", "-0.1", "0.2"]),
    "lab.opcod.specialise_seed": SEED,
    "lab.opcod.specialise_write_other": (["0", "0.2"], ["1", "-0.1"]),
    "lab.opcod.specialise_leaky_hints": (["0", "0.2"], ["1", "-0.1"]),
    "lab.opcod.gate_min_pass": (["0", "1"], ["-0.1", "1.1"]),
    "lab.panel.broad_accuracy": UNIT_OPEN_CLOSED,
    "lab.panel.steps": POS_INT,
    "lab.panel.lr": POSITIVE,
    "lab.panel.check_every": POS_INT,
    "lab.panel.prompts": POS_INT,
    "lab.panel.group": POS_INT,
    "lab.xtok.vocab_size": (["259", "512"], ["258", "1.5"]),
    "lab.xtok.prompts": POS_INT,
    "lab.xtok.group": POS_INT,
    "lab.xtok.steps": POS_INT,
    "lab.xtok.lr": POSITIVE,
    "lab.xtok.check_every": POS_INT,
    "lab.xtok.tolerance": (["0", "1"], ["-0.1", "1.1"]),
    "env.environments": (["add=python_tool", "add=lab_blocks", "add=mopdx_lab.envs:BlockOracle"], ["add=nope"]),
    "env.max_turns": POS_INT,
    "env.max_tokens": POS_INT,
    "env.timeout_s": POSITIVE,
    "env.workers": POS_INT,
    "env.stop": (["['</python>']", "[]"], ["['']"]),
    "env.train": (["true"], ["maybe", "false"]),  # false alone is refused: it needs env.environments (test_episodes_fit)
    "lab.blocks.prompts": POS_INT,
    "lab.blocks.group": POS_INT,
    "lab.blocks.steps": POS_INT,
    "lab.blocks.lr": POSITIVE,
    "lab.blocks.check_every": POS_INT,
    "lab.blocks.formed": (["0", "1"], ["-0.1", "1.1"]),
    "lab.blocks.teacher_reward": (["0", "1"], ["-0.1", "1.1"]),
    "lab.blocks.max_tokens": POS_INT,
    "lab.opcod.teacher_template": (["'{prompt}'"], ["nope", "'{solution}'"]),
    "lab.opcod.solution_template": (["'= {solution}'"], ["nope"]),
    "lab.opcod.feedback_template": (["'# {feedback}'"], ["nope"]),
    "lab.opcod.feedback_prompt_template": (["'hint {prompt}'"], ["nope"]),
}
# Keys under ``strategy``, per strategy (checked under that strategy; strategy.name once).
NAME = {"strategy.name": (["mopd", "camopd", "cascade", "opcod"], ["nope", "''"])}
STRATEGY: dict[str, dict[str, tuple[list[str], list[str]]]] = {
    "mopd": {**NAME},
    "cascade": {"strategy.order": (["[]", "[sort,add,reverse]", "[add]"], ["[math]", "[add,add]", "['']"]), "strategy.block_schedule": BOOL},
    "camopd": {
        "strategy.recovery_domains": (["[inc]", "[inc,rot]"], ["[]", "[math]", "[inc,inc]", "[rotp]"]),
        "strategy.review_domains": (["[rotp]"], ["[]", "[inc]", "[math]", "[rotp,rotp]", "[dec]"]),
        "strategy.gap_length": (["mean", "sqrt", "sum"], ["median", "''"]),
        "strategy.selector": (["gap", "random", "length_matched"], ["oracle", "''"]),
        "strategy.n_g": POS_INT,
        "strategy.alternate": BOOL,
        "strategy.select": BOOL,
        "strategy.rho": UNIT_OPEN_CLOSED,
        "strategy.recovery_gap": GAPS,
        "strategy.review_gap": GAPS,
    },
    "opcod": {
        "codistill.peers": (["A=/some/folder", "B=lab:opcod/base"], ["C=/some/folder", "A=''", "A=lab:nope"]),
        "codistill.strong_domain": (["A=add"], ["C=add", "A=''"]),
        "codistill.feedback_max_tokens": POS_INT,
        "codistill.divergence": (["reverse_kl", "jsd"], ["forward"]),
        "codistill.jsd_alpha": UNIT_OPEN,
        "codistill.teacher": (["current", "ema", "refreshed", "peer"], ["teacher", "other", "routed"]),
        "codistill.ema_decay": (["0", "0.999"], ["1", "-0.1"]),
        "codistill.refresh_every": POS_INT,
        "codistill.feedback_source": (["peer", "self", "shuffled"], ["other", "none"]),
        "codistill.measure_flips": BOOL,
        "codistill.measure_teacher": BOOL,
        "codistill.teacher_template": (["'{prompt}'"], ["nope"]),
        "codistill.solution_template": (["'= {solution}'"], ["nope"]),
        "codistill.feedback_template": (["'# {feedback}'"], ["nope"]),
        "codistill.feedback_prompt_template": (["'hint {prompt}'"], ["nope"]),
        "strategy.use_solution": BOOL,
        "strategy.feedback": BOOL,
        "strategy.gating": BOOL,
        "strategy.gate_min_pass": (["0", "1"], ["-0.1", "1.1"]),
        "strategy.anchoring": BOOL,
    },
}
# Cross-field rules a strategy adds on a common key: (strategy, override, key the message names).
EXTRA_INVALID: list[tuple[str, str, str]] = []  # none today (OPCoD on rollout.backend=vllm runs: tests/integration/test_vllm.py)
DICT_KEYS = {"env.environments", "model.teachers", "model.combine", "data.domain_ratios", "data.fields", "data.verifiers", "data.system_prompts", "data.chat_template_kwargs", "eval.groups", "codistill.peers", "codistill.strong_domain", "lab.camopd.mix", "lab.camopd.replay"}


def leaves(node: object, prefix: str = "") -> list[str]:
    """Dotted keys of the leaves; an empty mapping counts as a leaf, lists are leaves."""
    if isinstance(node, dict) and node:
        return [k for key, v in node.items() for k in leaves(v, f"{prefix}.{key}" if prefix else str(key))]
    return [prefix]


def table_key(strategy: str, key: str) -> str | None:
    # the codistill node is in every run's schema; its cases run under the strategy whose loop reads it
    table = {**NAME, **STRATEGY[strategy]} if key.startswith("strategy.") else STRATEGY["opcod"] if key.startswith("codistill.") else COMMON
    if key in table:
        return key
    return next((d for d in DICT_KEYS if key.startswith(d + ".") and d in table), None)


def cases() -> list:
    out = []
    for strategy in STRATEGIES:
        tables = [STRATEGY[strategy]] + ([COMMON] if strategy == "mopd" else [])
        for table in tables:
            for key, (valid, invalid) in table.items():
                for ok, values in ((True, valid), (False, invalid)):
                    for value in values:
                        override = f"{key}.{value}" if key in DICT_KEYS else f"{key}={value}"
                        out.append(pytest.param(strategy, override, key, ok, id=f"{strategy}-{'ok' if ok else 'bad'}-{override}"))
    out += [pytest.param(s, o, k, False, id=f"{s}-bad-{o}") for s, o, k in EXTRA_INVALID]
    return out


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_field_has_a_table_entry(strategy: str, tmp_path: Path) -> None:
    cfg = load_config(strategy, [], [f"lab.root={tmp_path / 'lab'}"])
    missing = [k for k in leaves(OmegaConf.to_container(cfg, resolve=True)) if table_key(strategy, k) is None]
    assert not missing, f"config fields without a test_config_values.py entry (add valid and invalid values): {missing}"


@pytest.mark.parametrize(("strategy", "override", "key", "ok"), cases())
def test_value(strategy: str, override: str, key: str, ok: bool, tmp_path: Path) -> None:
    lab = tmp_path / "lab"
    name = None if key == "strategy.name" else strategy  # the flag would win over strategy.name
    # lab v1's domain names, which the table's domain-valued entries use (the override comes last and
    # wins); CaMOPD's scenario is on lab v2's domains (inc, rot; rotp drawn by the scenario), and
    # OPCoD's default (uprot drawn, rot) too, so OPCoD's entries load on its lab v1 scenario
    named = (strategy, override.split("=")[-1])
    domains = [] if "camopd" in named or "opcod" in named else ["lab.domains=[add,reverse,sort]"]
    configs = [configs_dir() / "experiment" / "opcod_v1.yaml"] if "opcod" in named else []
    # training data of one's own is a run of one's own: the lab's run is not merged in
    # (mopdx.plugins.defaults_apply), so the case names its models too
    own = ["model.student=/some/student", "model.teachers.add=/some/teacher", "data.eval=/data/eval.jsonl"] if key == "data.train" and "=/" in override else []
    args = (name, configs, [f"lab.root={lab}", f"run.out_dir={tmp_path / 'runs'}", *domains, *own, override])
    if ok:
        load_config(*args)
    else:
        with pytest.raises(ConfigError) as exc:
            load_config(*args)
        msg = str(exc.value)
        assert "\n" not in msg and key in msg, msg
    assert not lab.exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("strategy", "override", "key"), [
    ("camopd", "strategy.rho=0", "strategy.rho"),
    ("mopd", "rollout.top_p=1.5", "rollout.top_p"),
    ("mopd", "train.precision=bogus", "train.precision"),
])
def test_cli_rejects_a_bad_value_before_building_anything(strategy: str, override: str, key: str, tmp_path: Path) -> None:
    """One error line, exit 2, and no lab artifact or run folder: the check ran before any build
    (how long it takes is a benchmark's business, not a test's: it depends on the machine's load)."""
    lab, runs = tmp_path / "lab", tmp_path / "runs"
    env = {**os.environ, "TQDM_DISABLE": "1"}
    proc = subprocess.run([sys.executable, "-m", "mopdx", "fit", "--strategy", strategy, override, f"lab.root={lab}", f"run.out_dir={runs}"],
                          capture_output=True, text=True, env=env, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error:") and key in lines[0], proc.stderr
    assert not lab.exists() and not runs.exists()


@pytest.mark.parametrize(("overrides", "key"), [
    (["rollout.backend=hf_cb", "rollout.sampler=keyed"], "rollout.sampler"),
    (["rollout.backend=hf_cb", "eval.sampler=keyed"], "eval.sampler"),
    (["rollout.backend=hf_cb", "train.devices=2", "train.parallel=ddp", "rollout.sampler=keyed", "eval.sampler=keyed"], "rollout.backend"),
])
def test_continuous_batching_refuses_what_one_seed_per_call_cannot_give(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config("mopd", [], overrides)
    assert key in str(exc.value) and "\n" not in str(exc.value)
    assert load_config("mopd", [], ["rollout.backend=hf_cb", "eval.sampler=keyed", "eval.greedy=true"]).rollout.backend == "hf_cb"


@pytest.mark.parametrize(("overrides", "key"), [
    (["train.devices=2"], "train.parallel"),
    (["train.devices=2", "train.parallel=ddp"], "rollout.sampler"),
    (["train.devices=2", "train.parallel=ddp", "rollout.sampler=keyed"], "eval.sampler"),
    (["train.num_nodes=2", "train.parallel=ddp", "rollout.sampler=keyed", "eval.sampler=keyed", "loss.adv_baseline=mean"], "loss.adv_baseline"),
    (["train.num_nodes=2", "train.parallel=ddp", "rollout.sampler=keyed", "eval.sampler=keyed"], "run.name"),
])
def test_multiprocess_settings_are_checked(overrides: list[str], key: str) -> None:
    """Several processes must give one process's update: each setting that would break that is named."""
    with pytest.raises(ConfigError) as exc:
        load_config("mopd", [], overrides)
    assert key in str(exc.value) and "\n" not in str(exc.value)
    ok = ["train.devices=2", "train.num_nodes=2", "train.parallel=ddp", "rollout.sampler=keyed", "eval.sampler=keyed", "run.name=x"]
    cfg = load_config("mopd", [], ok)
    assert cfg.train.devices == 2 and cfg.train.num_nodes == 2


def test_processes_started_together_need_a_run_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchrun / SLURM start every process at once, so they can only meet in run.out_dir/run.name
    (without one the main process wrote to runs/None and the others stopped)."""
    ok = ["train.devices=2", "train.parallel=ddp", "rollout.sampler=keyed", "eval.sampler=keyed"]
    assert load_config("mopd", [], ok).train.devices == 2  # Lightning's own launcher passes the folder on
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match=r"run.name.*torchrun"):
        load_config("mopd", [], ok)
    assert load_config("mopd", [], [*ok, "run.name=x"]).run.name == "x"


def test_fsdp_needs_a_gpu() -> None:
    """Lightning refuses FSDP on the CPU only when the Trainer is built, after the models load: say so first."""
    import torch

    for accelerator in ("cpu", "auto"):
        if accelerator == "auto" and torch.cuda.is_available():
            continue
        with pytest.raises(ConfigError, match="train.parallel.*CUDA"):
            load_config("mopd", [], ["train.parallel=fsdp", f"train.accelerator={accelerator}"])



def test_a_renamed_key_names_its_new_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^'train.strategy' \(from command-line override\) is now 'train.parallel'"):
        load_config("mopd", [], [f"lab.root={tmp_path}", "train.strategy=ddp"])
    old = tmp_path / "old.yaml"
    old.write_text("train:\n  strategy: ddp\n")
    with pytest.raises(ConfigError, match=r"'train.strategy' \(from .*old.yaml\) is now 'train.parallel'"):
        load_config("mopd", [old], [f"lab.root={tmp_path}"])


PANEL = ["model.teachers.add.sharp=lab:stage1", "model.teachers.add.broad=lab:stage1"]


@pytest.mark.parametrize(("overrides", "match"), [
    (["model.teachers.add={}"], "empty panel"),
    ([*PANEL, "model.combine.add.weights=[1]"], "1 weights for 2 teachers"),
    ([*PANEL, "model.combine.add.weights=[0,0]"], "sum to a positive number"),
    ([*PANEL, "model.combine.add.weights_end=[1,-1]"], "weights >= 0"),
    ([*PANEL, "model.combine.add.rule=advantage", "loss.kind=topk"], "cannot feed loss.kind=topk"),
    ([*PANEL, "model.combine.add.rule=mixture", "loss.kind=topk", "model.teacher_backend=vllm"], "full distribution"),
    (["model.cross_tokenizer=true", "loss.kind=full_reverse_kl"], "loss.kind=pg"),
    (["model.cross_tokenizer=true", "model.teacher_backend=vllm"], "teacher_backend=hf"),
])
def test_teacher_panels_are_checked_before_any_model_loads(overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as exc:
        load_config("mopd", [], overrides)
    assert "\n" not in str(exc.value)


def test_a_panel_with_its_combination_loads() -> None:
    cfg = load_config("mopd", [], [*PANEL, "model.combine.add.rule=closest", "model.combine.add.weights=[1,3]"])
    assert dict(cfg.model.teachers.add) == {"sharp": "lab:stage1", "broad": "lab:stage1"} and cfg.model.combine.add.rule == "closest"
