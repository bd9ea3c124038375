"""Several processes through torchrun (gloo on CPU), compared with one process on the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_overrides
from nanonlp.config import load_config
from nanonlp.train import fit

# Two processes each take half of a global batch of 8; one process takes all 8. Gradients are
# averaged across ranks, so the curves agree up to float reduction order, amplified a little by
# Adam over 20 steps: we allow 1e-4 per logged loss.
TOLERANCE = 1e-4


def torchrun(args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "nanonlp", "train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def train_losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r]
    assert len(steps) == len(set(steps)), "one writer: no step is logged twice"
    return {r["step"]: r["loss"] for r in records if "loss" in r}


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text("model: {type: gpt}\n")
    return path


def test_two_process_ddp_matches_one_process_and_resumes(tmp_path, corpus, config_file):
    common = dict(train__lr_decay_steps=20, train__keep_checkpoints=5)
    single = load_config(None, tiny_overrides(corpus, tmp_path / "single", train__batch_size=8, **common))
    fit(single, quiet=True)
    expected = train_losses(tmp_path / "single")

    ddp = tmp_path / "ddp"
    torchrun([str(config_file), "--quiet", *tiny_overrides(corpus, ddp, train__batch_size=4, train__max_steps=10, **common)])
    torchrun([str(config_file), "--quiet", "--resume", *tiny_overrides(corpus, ddp, train__batch_size=4, **common)])
    got = train_losses(ddp)

    assert sorted(got) == sorted(expected) == list(range(1, 21))
    for step in expected:
        assert abs(got[step] - expected[step]) < TOLERANCE, (step, got[step], expected[step])
    # rank 0 alone wrote checkpoints: one directory per evaluation, nothing half-written
    names = sorted(p.name for p in (ddp / "checkpoints").iterdir())
    assert names == ["latest", "step_00000010", "step_00000020"]


def test_ddp_with_gradient_accumulation(tmp_path, corpus, config_file):
    # 2 ranks x 2 micro-batches of 2 = the same global batch of 8 (all-reduce only on the last micro-batch)
    single = load_config(None, tiny_overrides(corpus, tmp_path / "single", train__batch_size=8, train__max_steps=6))
    fit(single, quiet=True)
    ddp = tmp_path / "ddp"
    torchrun([str(config_file), "--quiet", *tiny_overrides(corpus, ddp, train__batch_size=2, train__grad_accum_steps=2,
                                                            train__max_steps=6)])
    expected, got = train_losses(tmp_path / "single"), train_losses(ddp)
    for step in expected:
        assert abs(got[step] - expected[step]) < TOLERANCE, (step, got[step], expected[step])


def test_fsdp_matches_one_process_and_resumes(tmp_path, corpus, config_file):
    pytest.importorskip("torch.distributed.fsdp", reason="this PyTorch has no FSDP")
    from torch.distributed import fsdp

    if not hasattr(fsdp, "fully_shard"):
        pytest.skip("this PyTorch has no fully_shard (FSDP2)")
    common = dict(train__lr_decay_steps=12, train__max_steps=12, train__eval_interval=6)
    single = load_config(None, tiny_overrides(corpus, tmp_path / "single", train__batch_size=8, **common))
    fit(single, quiet=True)
    sharded = tmp_path / "fsdp"
    args = tiny_overrides(corpus, sharded, train__batch_size=4, train__fsdp="true", **common)
    torchrun([str(config_file), "--quiet", *args, "--train.max_steps=6"])
    torchrun([str(config_file), "--quiet", "--resume", *args])
    expected, got = train_losses(tmp_path / "single"), train_losses(sharded)
    assert sorted(got) == list(range(1, 13))
    for step in expected:
        assert abs(got[step] - expected[step]) < TOLERANCE, (step, got[step], expected[step])
    # the saved weights are whole (gathered from the shards) and load into an unsharded model
    import nanonlp

    model = nanonlp.load(sharded, device="cpu")
    single_model = nanonlp.load(tmp_path / "single", device="cpu")
    import torch

    idx = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.allclose(model.model(idx)[0], single_model.model(idx)[0], atol=1e-3)


def _prepare_and_fail(rank: int, port: int, results) -> None:
    """One of two gloo processes: rank 0's preparation fails with an error that is not ours."""
    import torch.distributed as dist

    from nanonlp.errors import NanoNLPError
    from nanonlp.train import Distributed

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        def prepare():
            raise RuntimeError("out of memory while the teacher labels")

        Distributed(rank=rank, local_rank=rank, world_size=2).main_first(prepare, torch.device("cpu"))
        results.put((rank, "returned"))
    except NanoNLPError as error:
        results.put((rank, f"NanoNLPError: {error}"))
    except RuntimeError as error:
        results.put((rank, f"RuntimeError: {error}"))
    finally:
        dist.destroy_process_group()


def test_a_failure_of_any_kind_on_rank_0_during_preparation_stops_every_rank():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.get_context("spawn")
    results = context.Queue()
    procs = [context.Process(target=_prepare_and_fail, args=(rank, port, results)) for rank in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
    assert not hung, "a rank was left waiting for rank 0"
    outcome = dict(results.get(timeout=5) for _ in procs)
    assert outcome[0] == "RuntimeError: out of memory while the teacher labels"  # rank 0 keeps its own error
    assert outcome[1].startswith("NanoNLPError: rank 0 could not prepare the run")
