"""FSDP outside the training step: the eval and the final model folder read gathered weights.

Lightning's FSDP needs CUDA, so this drives torch's FSDP directly: two CPU processes
(gloo) shard a tiny student; outside :func:`full_weights` each holds only its shard
(``generate`` fails), inside it both sample exactly what the unsharded student samples,
and :class:`SaveFinal` writes the unsharded weights.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from mopdx.backends.base import Sampling
from mopdx.backends.hf import HFRolloutBackend
from mopdx.config import EvalConfig
from mopdx.data import Example
from mopdx.models import load_model, load_tokenizer
from mopdx.run.assembly import save_final
from mopdx.run.callbacks import PeriodicEval
from mopdx.run.evaluation import eval_sampling
from mopdx.run.gathered import SaveFinal, full_weights, is_sharded
from mopdx.text import encode_prompt

pytestmark = pytest.mark.slow

PROMPTS = [[5, 6, 7], [8, 9]]
EVAL = EvalConfig(greedy=True, max_new_tokens=6)


def _greedy(model: torch.nn.Module, tokenizer) -> list[list[int]]:
    backend = HFRolloutBackend(model, tokenizer.pad_token_id, tokenizer.eos_token_id)
    return backend.generate(PROMPTS, ["d", "d"], Sampling(max_new_tokens=6, greedy=True)).completion_ids.tolist()


def _rank(rank: int, world: int, port: int, folder: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from torch.distributed.fsdp import FullyShardedDataParallel

    tokenizer = load_tokenizer(folder)
    student = load_model(folder).eval()
    root = FullyShardedDataParallel(torch.nn.ModuleDict({"student": student}), device_id=torch.device("cpu"))
    report: dict = {"sharded": is_sharded(root), "local_numel": sum(p.numel() for p in student.parameters())}
    try:
        _greedy(student, tokenizer)
        report["sharded_generate"] = "ran"
    except Exception as exc:  # the shards alone cannot run a forward
        report["sharded_generate"] = type(exc).__name__
    with full_weights(root):
        report["gathered_numel"] = sum(p.numel() for p in student.parameters())
        report["greedy"] = _greedy(student, tokenizer)
    trainer = SimpleNamespace(strategy=SimpleNamespace(model=root), is_global_zero=rank == 0, global_rank=rank, world_size=world, global_step=0, loggers=[])
    examples = [Example(**e) for e in json.loads(Path(out, "examples.json").read_text())]
    evaluator = PeriodicEval(examples, EVAL, every=0, run_dir=Path(out), teacher_acc={})
    report["eval"] = evaluator.evaluate(trainer, SimpleNamespace(rollout=HFRolloutBackend(student, tokenizer.pad_token_id, tokenizer.eos_token_id), tokenizer=tokenizer))["acc"]
    SaveFinal(student, tokenizer, Path(out) / "final").on_train_end(trainer, None)
    Path(out, f"rank{rank}.json").write_text(json.dumps(report))
    dist.destroy_process_group()


def _own_answers(model: torch.nn.Module, tokenizer) -> list[dict]:
    """Prompts whose reference answer is the unsharded student's own greedy completion:
    an eval reading the whole student scores 1.0 on them."""
    prompts = [f"add: {a} + {b}" for a, b in [(1, 2), (13, 4), (7, 22), (5, 5)]]
    ro = HFRolloutBackend(model, tokenizer.pad_token_id, tokenizer.eos_token_id).generate(
        [encode_prompt(tokenizer, p) for p in prompts], ["add"] * 4, eval_sampling(EVAL))
    texts = tokenizer.batch_decode(ro.completion_ids, skip_special_tokens=True)
    return [{"domain": "add", "prompt": p, "answer": t} for p, t in zip(prompts, texts)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_full_weights_under_fsdp_on_two_processes(tiny_model_factory, tiny_tokenizer, tmp_path: Path) -> None:
    model = tiny_model_factory(seed=3)
    save_final(model, tiny_tokenizer, tmp_path / "start")
    expected = _greedy(model, tiny_tokenizer)
    total = sum(p.numel() for p in model.parameters())
    (tmp_path / "examples.json").write_text(json.dumps(_own_answers(model, tiny_tokenizer)))
    mp.spawn(_rank, args=(2, _free_port(), str(tmp_path / "start"), str(tmp_path)), nprocs=2)
    for rank in (0, 1):
        r = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert r["sharded"] and r["local_numel"] < total, r
        assert r["sharded_generate"] != "ran", "the test needs a student whose shards alone cannot sample"
        assert r["gathered_numel"] == total
        assert r["greedy"] == expected
        assert r["eval"] == {"add": 1.0}  # each process scored its half with the whole student; the means reduced
    saved, start = load_file(str(tmp_path / "final" / "model.safetensors")), load_file(str(tmp_path / "start" / "model.safetensors"))
    assert saved.keys() == start.keys()
    assert max((saved[k] - start[k]).abs().max().item() for k in start) == 0.0


def test_full_weights_is_a_no_op_without_fsdp(tiny_model_factory) -> None:
    model = tiny_model_factory()
    assert not is_sharded(model) and not is_sharded(None)
    with full_weights(model):
        assert sum(p.numel() for p in model.parameters()) > 0
