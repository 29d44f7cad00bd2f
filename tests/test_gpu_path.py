"""The GPU path, tested on the CPU where the mechanism allows: per-rank random streams saved per rank,
one device rule per process, no host round-trips in a training step, bf16 numerics; CUDA-gated checks
(``PATHALIGN_GPU_TESTS=1``) for what only a GPU can show; ``benchmarks/gpu_check.sh --dry-run``."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REFERENCE, rel_err
from helpers import Killed, init_gloo, killed_after_checkpoint, random_slide, seeded_rng
from pathalign.devices import DeviceError
from pathalign.distributed import setup_distributed

ROOT = Path(__file__).resolve().parents[1]
GPU = pytest.mark.skipif(not (os.environ.get("PATHALIGN_GPU_TESTS") == "1" and torch.cuda.is_available()),
                         reason="GPU tests: set PATHALIGN_GPU_TESTS=1 on a CUDA machine")


# ------------------------------------------------------------------ one device rule
@pytest.fixture
def fake_cuda(monkeypatch):
    """Four fake GPUs; records ``set_device`` and ``init_process_group`` calls in order."""
    import torch.distributed as dist

    calls: list[tuple] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", torch.device(d))))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: calls.append(("init", backend)))
    return calls


def _torchrun_env(monkeypatch, rank, world, local_rank, local_world):
    for k, v in dict(RANK=rank, WORLD_SIZE=world, LOCAL_RANK=local_rank, LOCAL_WORLD_SIZE=local_world).items():
        monkeypatch.setenv(k, str(v))


@pytest.mark.parametrize("spec", ["cuda", "auto", "CUDA "])
def test_torchrun_process_takes_its_local_rank_gpu_set_before_nccl(fake_cuda, monkeypatch, spec):
    _torchrun_env(monkeypatch, rank=3, world=4, local_rank=1, local_world=2)  # 2 nodes x 2 GPUs, node 1
    info = setup_distributed(spec)
    assert info.device == torch.device("cuda", 1) and (info.rank, info.world_size, info.local_rank) == (3, 4, 1)
    assert fake_cuda == [("set_device", torch.device("cuda", 1)), ("init", "nccl")]


def test_torchrun_cpu_is_gloo_without_set_device(fake_cuda, monkeypatch):
    _torchrun_env(monkeypatch, rank=1, world=2, local_rank=1, local_world=2)
    assert setup_distributed("cpu").device == torch.device("cpu")
    assert fake_cuda == [("init", "gloo")]


def test_explicit_gpu_index_under_torchrun(fake_cuda, monkeypatch):
    _torchrun_env(monkeypatch, rank=1, world=2, local_rank=1, local_world=2)
    with pytest.raises(DeviceError, match=r"--device cuda:3 under torchrun with 2 processes.*--device cuda"):
        setup_distributed("cuda:3")
    assert fake_cuda == []  # refused before anything started
    _torchrun_env(monkeypatch, rank=1, world=2, local_rank=0, local_world=1)  # one process per node: kept
    assert setup_distributed("cuda:3").device == torch.device("cuda", 3)
    assert fake_cuda == [("set_device", torch.device("cuda", 3)), ("init", "nccl")]


def test_single_process_keeps_explicit_index_and_local_rank_beyond_gpus_is_refused(fake_cuda, monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    assert setup_distributed("cuda:2").device == torch.device("cuda", 2)
    assert fake_cuda == [("set_device", torch.device("cuda", 2))]  # no process group outside torchrun
    from pathalign.distributed import resolve_device

    _torchrun_env(monkeypatch, rank=5, world=6, local_rank=5, local_world=6)
    with pytest.raises(DeviceError, match="GPU index 5 does not exist"):
        resolve_device("cuda")


def test_preflight_applies_the_same_rule(fake_cuda, monkeypatch):
    import argparse

    from pathalign.cli import preflight

    _torchrun_env(monkeypatch, rank=1, world=2, local_rank=1, local_world=2)
    with pytest.raises(DeviceError, match="under torchrun"):
        preflight("encode-example", argparse.Namespace(device="cuda:0"))
    preflight("encode-example", argparse.Namespace(device="cuda"))
    assert fake_cuda == []  # a check only: nothing is set up


def test_a_verb_resolves_its_device_by_the_same_rule_as_setup_distributed(fake_cuda, monkeypatch):
    """embed, ablate, demo, pretrain-rna and heatmap call resolve_device in their run: under torchrun a plain
    cuda is this process's GPU there too, as setup_distributed and the preflight make it (not the current GPU)."""
    from pathalign.devices import resolve_device

    _torchrun_env(monkeypatch, rank=3, world=4, local_rank=1, local_world=2)
    assert resolve_device("cuda") == resolve_device("auto") == setup_distributed("cuda").device == torch.device("cuda", 1)
    with pytest.raises(DeviceError, match="under torchrun"):
        resolve_device("cuda:0")
    assert resolve_device("cuda", local_rank=2) == torch.device("cuda", 2)  # an explicit local rank wins


# ------------------------------------------------------------------ per-rank random streams (2-process gloo)


def _train_cfg(preset="tiny", **kw):
    from pathalign.train.trainer import TrainConfig

    base = dict(steps=8, batch_size=16, checkpoint_every=4, max_tokens=32, progress=False, seed=0,
                diagnostics_every=0, model_overrides={"dropout": 0.3})
    base.update(kw)
    return TrainConfig.from_preset(preset, **base)


def _dropout_masks(trainer) -> list[torch.Tensor]:
    """The masks every dropout layer (p > 0) draws in one training forward pass."""
    masks, hooks = [], []
    for mod in trainer.model.modules():
        if isinstance(mod, torch.nn.Dropout) and mod.p > 0:
            hooks.append(mod.register_forward_hook(lambda m, i, o: masks.append(((o == 0) & (i[0] != 0)).flatten())))
    trainer.net.train()
    trainer.compute_loss(trainer.batches[0])
    for h in hooks:
        h.remove()
    assert masks, "no dropout layer ran"
    return masks


def _ddp_worker(rank: int, world: int, init_file: str, cohort: str, out: str) -> None:
    """An uninterrupted run (then the masks one more forward draws), and a run killed after its step-4
    checkpoint and resumed; the parent compares. The group is joined through a file rendezvous before the
    trainer starts (which then keeps it): no TCP port to race for."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from pathalign.train.trainer import Trainer

    out = Path(out)
    init_gloo(rank, world, init_file, timeout_s=90)  # a rank left waiting fails, not hangs
    try:
        full = Trainer(cohort, out / "full", _train_cfg())
        full.fit()
        torch.save(_dropout_masks(full), out / f"masks.{rank}")
        original = Trainer.save_checkpoint
        Trainer.save_checkpoint = killed_after_checkpoint(4)
        try:
            Trainer(cohort, out / "resumed", _train_cfg()).fit()
        except Killed:
            pass
        finally:
            Trainer.save_checkpoint = original
        dist.barrier()  # rank 0 has written the checkpoint before anyone resumes
        Trainer(cohort, out / "resumed", _train_cfg(), resume=True).fit()
    finally:
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_runs(features_cohort, tmp_path_factory):
    """Two gloo processes, dropout 0.3: a full run, and a killed-and-resumed one (one spawn for both tests)."""
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("ddp")
    try:
        mp.spawn(_ddp_worker, args=(2, str(out / "rendezvous"), str(features_cohort[0]), str(out)), nprocs=2,
                 join=True)
    except Exception as e:  # noqa: BLE001 - reported by the test that needs the whole run
        (out / "error.txt").write_text(f"{type(e).__name__}: {e}")
    return out


@pytest.mark.slow
def test_ranks_draw_different_dropout_masks(ddp_runs):
    a, b = (torch.load(ddp_runs / f"masks.{r}", weights_only=True) for r in (0, 1))
    assert len(a) == len(b) and all(x.shape == y.shape for x, y in zip(a, b))
    same = [bool(torch.equal(x, y)) for x, y in zip(a, b)]
    assert not any(same), f"ranks 0 and 1 drew the same dropout mask in layers {[i for i, s in enumerate(same) if s]}"


def test_ddp_kill_and_resume_ends_with_the_uninterrupted_weights(ddp_runs):
    from pathalign import load_model

    assert not (ddp_runs / "error.txt").exists(), (ddp_runs / "error.txt").read_text()[-3000:]
    state = torch.load(ddp_runs / "resumed" / "checkpoints" / "step_0000008.pt", weights_only=True)
    assert len(state["rng_states"]) == 2
    assert not torch.equal(state["rng_states"][0]["cpu"], state["rng_states"][1]["cpu"])
    a = load_model(ddp_runs / "full" / "model").state_dict()
    b = load_model(ddp_runs / "resumed" / "model").state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_with_another_world_size_is_refused(features_cohort, tmp_path):
    from pathalign.train.rng_state import RNGStateError
    from pathalign.train.trainer import Trainer

    Trainer(features_cohort[0], tmp_path, _train_cfg(steps=2, checkpoint_every=2)).fit()
    path = tmp_path / "checkpoints" / "step_0000002.pt"
    state = torch.load(path, weights_only=True)
    state["rng_states"] = state["rng_states"] * 2  # as if written by 2 processes
    torch.save(state, path)
    with pytest.raises(RNGStateError, match=r"--resume with 1 process, but the checkpoint was written by 2"):
        Trainer(features_cohort[0], tmp_path, _train_cfg(steps=2, checkpoint_every=2), resume=True)


def test_rank_seeds_and_state_round_trip():
    import random

    from pathalign.train.rng_state import capture, rank_seed, restore

    assert rank_seed(7, 0) == 7 and len({rank_seed(7, r) for r in range(64)}) == 64
    assert rank_seed(7, 3) == rank_seed(7, 3) and rank_seed(7, 3) != rank_seed(8, 3)
    state = capture()
    expect = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(123), np.random.seed(5), random.seed(9)
    restore(torch.load(_saved(state), weights_only=True))  # survives a weights_only checkpoint
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expect[0], got[0]) and np.array_equal(expect[1], got[1]) and expect[2] == got[2]


def test_checkpoint_from_before_per_rank_states_still_resumes():
    from pathalign.train.rng_state import rank_seed, restore_from_checkpoint

    torch.manual_seed(11)
    old = {"rng_torch": torch.get_rng_state(), "step": 40}  # what checkpoints held: rank 0's CPU state only
    expect = torch.rand(4)
    torch.manual_seed(0)
    restore_from_checkpoint(old, seed=3, rank=0, world_size=2)
    assert torch.equal(torch.rand(4), expect)
    restore_from_checkpoint(old, seed=3, rank=1, world_size=2)  # re-seeded from (seed, rank, step)
    got = torch.rand(4)
    torch.manual_seed(rank_seed(3, 1, 40))
    assert torch.equal(got, torch.rand(4)) and not torch.equal(got, expect)


def _saved(obj):
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


# ------------------------------------------------------------------ host round-trips per training step
# .numpy() is not counted: it cannot read device memory (only .cpu() and the others can)
HOST_READS = ("item", "tolist", "cpu", "__bool__", "__int__", "__float__", "__index__")
READS_PER_STEP = 2  # the non-finite-loss check (one bool) and the log row (one tolist)


class _HostReads:
    """Counts the calls that read a tensor back to the host, while ``on``; the optimizer's own step counters
    are left out (``torch.optim`` keeps them on the host by design, ``capturable=False``)."""

    def __init__(self, monkeypatch):
        self.on, self.calls = False, []
        for name in HOST_READS:
            monkeypatch.setattr(torch.Tensor, name, self._wrap(name, getattr(torch.Tensor, name)))

    def _wrap(self, name, original):
        def counted(t, *args, **kwargs):
            if self.on:
                caller = sys._getframe(1)
                module = caller.f_globals.get("__name__", "?")
                if not module.startswith("torch.optim"):
                    self.calls[-1].append(f"{name} in {module}:{caller.f_lineno}")
            return original(t, *args, **kwargs)

        return counted


def _count_fit(trainer, reads, monkeypatch) -> list[list[str]]:
    """Run ``trainer.fit()``; the host reads of each step, from the batch handed over to the next request."""
    loader = type(trainer)._loader.__get__(trainer)  # the real one, also when called again

    def counted_loader():
        for batch in loader():
            reads.calls.append([])
            reads.on = True
            yield batch
            reads.on = False

    monkeypatch.setattr(trainer, "_loader", counted_loader)
    reads.calls = []
    trainer.fit()
    reads.on = False
    return reads.calls


def test_training_step_reads_the_host_a_constant_number_of_times(features_cohort, tmp_path, monkeypatch):
    from pathalign.train.data import BatchSpec, StepBatches
    from pathalign.train.trainer import Trainer

    trainer = Trainer(features_cohort[0], tmp_path, _train_cfg("small", steps=3, checkpoint_every=100, batch_size=4))
    reads = _HostReads(monkeypatch)
    per_config = {}
    for batch_size, tokens in ((4, 16), (12, 96)):
        trainer.batches = StepBatches(trainer.data, trainer.train_idx, BatchSpec(0, batch_size, tokens, 0.0))
        steps = _count_fit(trainer, reads, monkeypatch)
        per_config[(batch_size, tokens)] = steps
        for s, calls in enumerate(steps[:-1]):  # the last step also writes the final checkpoint
            assert len(calls) == READS_PER_STEP, f"batch {batch_size}, {tokens} tokens, step {s + 1}: {calls}"
    assert per_config[(4, 16)][-1] == per_config[(12, 96)][-1]  # the checkpoint step too: a constant


# ------------------------------------------------------------------ bf16 numerics on the CPU
BF16_ENCODER_RTOL = 3e-2  # relative L2 error of bf16 autocast vs fp32 (measured 1.0e-2 to 1.2e-2; bf16 keeps 8 bits)
BF16_LOSS_RTOL = 0.02  # mean |loss_bf16 - loss_fp32| / mean loss_fp32 over 16 steps (measured 0.0036)


def test_slide_encoder_bf16_autocast_matches_fp32():
    from pathalign.models import SlideEncoder
    from pathalign.models.attention import choose_backend

    rng = seeded_rng()
    torch.manual_seed(int(rng.integers(1 << 31)))
    enc = SlideEncoder.from_preset("small", input_dim=32).eval()
    slides = [random_slide(rng, n, 32, f) for n, f in ((300, 5), (170, 1), (90, 3))]
    assert choose_backend(enc.config.attention_backend, torch.device("cpu"), torch.bfloat16) == "segment"
    with torch.inference_mode():
        ref = enc.encode_batch(slides)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = enc.encode_batch(slides)
    for s, (a, b) in enumerate(zip(ref, low)):
        assert b["patch_tokens"].dtype == torch.bfloat16  # the blocks did run in bf16
        for key in ("slide_embedding", "patch_tokens", "cls"):
            err = rel_err(b[key].float(), a[key])
            assert err < BF16_ENCODER_RTOL, f"slide {s} {key}: bf16 relative error {err:.2e}"


def test_short_bf16_training_run_follows_the_fp32_loss_curve(features_cohort, tmp_path):
    import copy

    from pathalign.train.trainer import Trainer

    trainer = Trainer(features_cohort[0], tmp_path, _train_cfg(steps=16, batch_size=16, max_tokens=32))
    start = copy.deepcopy((trainer.model.state_dict(), trainer.opt.state_dict(), trainer.sched.state_dict()))
    rng = torch.get_rng_state()

    def curve(dtype) -> np.ndarray:
        trainer.model.load_state_dict(start[0])
        trainer.opt.load_state_dict(start[1])
        trainer.sched.load_state_dict(start[2])
        torch.set_rng_state(rng)
        trainer.autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)
        losses = []
        for step in range(trainer.cfg.steps):
            out = trainer.forward_backward(trainer.batches[step], step + 1)
            torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), trainer.cfg.grad_clip)
            trainer.opt.step()
            trainer.sched.step()
            losses.append(float(out.loss))
        return np.array(losses)

    fp32, bf16 = curve(torch.float32), curve(torch.bfloat16)
    assert fp32[-4:].mean() < 0.9 * fp32[:4].mean()  # the run does learn
    gap = np.abs(bf16 - fp32).mean() / fp32.mean()
    print(f"bf16 vs fp32 loss curve: mean relative gap {gap:.4f}")
    assert gap < BF16_LOSS_RTOL, f"bf16 loss curve {gap:.3f} (relative) from fp32: {bf16.round(3)} vs {fp32.round(3)}"


# ------------------------------------------------------------------ CUDA-gated
@GPU
def test_cuda_training_step_has_no_host_sync(features_cohort, tmp_path):
    from pathalign.train.trainer import Trainer

    trainer = Trainer(features_cohort[0], tmp_path, _train_cfg("small", device="cuda", batch_size=8, max_tokens=256))
    for step in range(2):  # the first step initialises the CUDA libraries (handles, workspaces): not counted
        batch = trainer._to_device(trainer.batches[step])
        if step == 1:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
        try:
            with trainer.autocast():
                out = trainer.compute_loss(batch)
            trainer.opt.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), trainer.cfg.grad_clip)
            trainer.opt.step()
            trainer.sched.step()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(out.loss)


@GPU
def test_cuda_rope_tables_equal_the_cpu_ones():
    from pathalign.models import SlideEncoder

    rng = seeded_rng()
    enc = SlideEncoder.from_preset("small", input_dim=16)
    slides = [random_slide(rng, 400, 16, 4), random_slide(rng, 50, 16, 1)]
    cpu = enc._rope_tables(enc.pack(slides), torch.device("cpu"))
    gpu = enc.to("cuda")._rope_tables(enc.pack(slides), torch.device("cuda"))
    for a, b in zip(cpu, gpu):
        assert (a - b.cpu()).abs().max() < 1e-6


# ------------------------------------------------------------------ RoPE built on the batch's device
def test_device_rope_keeps_parity_with_the_published_vectors():
    from safetensors.torch import load_file

    from pathalign.models import SlideEncoder

    ref = load_file(str(REFERENCE / "ep25_small.safetensors"))
    enc = SlideEncoder.from_exaone_path({k[len("weights."):]: v for k, v in ref.items() if k.startswith("weights.")})
    mask = ref["input.mask"].bool()
    worst = 0.0
    with torch.inference_mode():
        for b in range(mask.shape[0]):
            m = mask[b]
            out = enc.encode(ref["input.features"][b][m], ref["input.coords"][b][m], ref["input.fragment"][b][m])
            worst = max(worst, rel_err(out["slide_embedding"], ref["output.slide_embedding"][b]))
    assert worst < 1e-6, f"relative error {worst:.1e} against the published outputs (was ~3e-7)"


# ------------------------------------------------------------------ benchmarks/gpu_check.sh
def test_gpu_check_dry_run_lists_every_stage_and_its_files():
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    names = ["cuda-tests", "official", "kernel", "extract", "train-step", "train-bf16", "nccl-2proc"]
    assert [line.split("]")[0].strip("[") for line in lines] == [str(i) for i in range(1, 8)], proc.stdout
    for name, line in zip(names, lines):
        assert f" {name} " in line and "limit" in line, line
        for word in line.split():
            if word.startswith(("tests/", "benchmarks/")):
                assert (ROOT / word).is_file(), f"{name}: {word} does not exist"
    only = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--only", "3,5"],
                          capture_output=True, text=True, timeout=60)
    assert [line.split("]")[0] for line in only.stdout.splitlines()] == ["[3", "[5"]
    bad = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown argument" in bad.stderr


def test_gpu_stages_run_on_the_cpu_and_leave_json(tmp_path, monkeypatch):
    import json

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import gpu_stages

    gpu_stages.main(["kernel", "--device", "cpu", "--preset", "tiny", "--tokens", "64,128", "--repeats", "1",
                     "--json", str(tmp_path / "kernel.json")])
    gpu_stages.main(["train-step", "--device", "cpu", "--preset", "tiny", "--tokens", "48", "--slides", "2",
                     "--fragments", "3", "--repeats", "1", "--json", str(tmp_path / "step.json")])
    kernel = json.loads((tmp_path / "kernel.json").read_text())
    assert [r["tokens"] for r in kernel["rows"]] == [64, 128] and all(r["tflops"] > 0 for r in kernel["rows"])
    step = json.loads((tmp_path / "step.json").read_text())["rows"][0]
    assert step["outcome"] == "ok" and np.isfinite(step["loss"]) and step["checkpoint_activations"]


@pytest.mark.skipif(not os.environ.get("EXAONE_PATH_CODE"),
                    reason="needs a checkout of LG-AI-EXAONE/EXAONE-Path-2.5: set EXAONE_PATH_CODE=/path/to/it")
def test_official_comparison_runs_on_the_cpu(tmp_path, monkeypatch):
    import json

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import gpu_stages

    gpu_stages.main(["official", "--device", "cpu", "--dtype", "fp32", "--tokens", "200", "--fragments", "4",
                     "--repeats", "1", "--json", str(tmp_path / "o.json")])
    rows = json.loads((tmp_path / "o.json").read_text())["rows"]
    assert rows[-1]["rel_err"] < 1e-4, rows
