"""The measurements of ``benchmarks/gpu_check.sh``, one subcommand each, each writing one JSON file.

    python benchmarks/gpu_stages.py official --exaone-code DIR --tokens 16384,50000,100000 --json out.json
    python benchmarks/gpu_stages.py kernel   --tokens 16384,50000,100000 --json out.json
    python benchmarks/gpu_stages.py extract  --slide ../shared/data/cmu_small_region.svs --json out.json
    python benchmarks/gpu_stages.py train-step --tokens 50000 --slides 4 --json out.json

* ``official``: pathalign's slide encoder vs the published ``WSIEncoder`` (its dense ``[B, T, T]`` mask),
  run from a scratch copy of their code (``--exaone-code``: a checkout of LG-AI-EXAONE/EXAONE-Path-2.5,
  never vendored here) with the published config (``slide_encoder_config.yaml``) and random weights that
  pathalign loads with ``from_exaone_path``: time, peak memory, who runs out of memory, outputs equal.
* ``kernel``: the attention kernel of a NoPE block (one segment of T tokens) in bf16: achieved TFLOP/s
  and its share of the dense bf16 peak (``--peak-tflops``, 989 for an H100/H200 SXM).
* ``extract``: patches/s of ``exaone-path-2.5`` (ViT-B/14) and ``uni`` (ViT-L/16), random weights, with
  the DataLoader reading a real slide.
* ``train-step``: one bf16 training step (slide encoder + pair head + SigLIP loss + AdamW) on slides of
  ``--tokens`` tokens with activation checkpointing: seconds, peak memory.

Every measurement is written as soon as it exists (the JSON is rewritten after each), so a stage that
runs out of time or memory still leaves the numbers it had. ``--device cpu`` with small sizes runs
everything but ``official`` on a CPU (the test suite does, as a smoke test).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # fragment_layout, slide_encoder (benchmarks/)
BF16_RTOL = 3e-2  # outputs "equal" in bf16: relative L2 error below this (tests/test_gpu_path.py)


class Recorder:
    """Rows of one stage, rewritten to ``path`` after each one."""

    def __init__(self, path: str | None, stage: str, meta: dict):
        self.path, self.data = path, {"stage": stage, "meta": meta, "rows": []}
        self.flush()

    def add(self, row: dict) -> None:
        self.data["rows"].append(row)
        print(json.dumps(row), flush=True)
        self.flush()

    def flush(self) -> None:
        if self.path:
            tmp = f"{self.path}.tmp"
            Path(tmp).write_text(json.dumps(self.data, indent=1))
            os.replace(tmp, self.path)


def _meta(device: torch.device) -> dict:
    meta = {"torch": torch.__version__, "device": str(device)}
    if device.type == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(device)
    return meta


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _measure(fn, device: torch.device, repeats: int) -> dict:
    """Median seconds of ``fn`` after one warm-up, and the peak memory (CUDA) over all runs; OOM is a result."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    try:
        out = fn()
        _sync(device)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = fn()
            _sync(device)
            times.append(time.perf_counter() - t0)
    except torch.OutOfMemoryError as e:
        return {"outcome": "out of memory", "error": str(e).splitlines()[0][:200]}
    row = {"outcome": "ok", "seconds": statistics.median(times), "out": out}
    if device.type == "cuda":
        row["peak_mib"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    return row


def _slide(tokens: int, fragments: int, dim: int, seed: int = 0):
    from slide_encoder import random_slide

    return random_slide(tokens, fragments, dim, seed)


def _autocast(device: torch.device, dtype: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")


# ------------------------------------------------------------------ official
def _official_encoder(code: Path):
    """The published WSIEncoder's transformer + head, built as their factory builds it, from their config."""
    import yaml

    sys.path.insert(0, str(code))
    from exaonepath.models.slide_encoder_head import WSIEncoderHead  # type: ignore[import-not-found]
    from exaonepath.models.slide_transformer import VisionTransformer  # type: ignore[import-not-found]

    cfg = yaml.safe_load((code / "slide_encoder_config.yaml").read_text())["wsi_encoder"]
    keys = ("input_dim", "embed_dim", "depth", "num_heads", "ffn_ratio", "qkv_bias", "ffn_layer", "ffn_bias",
            "embed_use_norm", "n_storage_tokens", "nope_interval")
    kwargs = {k: cfg[k] for k in keys if k in cfg}
    kwargs.update(ffn_drop=0.0, attn_drop=0.0, pos_embed_rope_base=cfg.get("pos_embed_rope_base", 10000.0))
    transformer = VisionTransformer(**kwargs)
    transformer.init_weights()
    return WSIEncoderHead(transformer, int(kwargs["input_dim"]), int(kwargs["embed_dim"])).eval(), cfg


def run_official(args) -> None:
    from pathalign.models import SlideEncoder

    device = torch.device(args.device)
    code = Path(args.exaone_code).resolve()
    rec = Recorder(args.json, "official", {**_meta(device), "exaone_code": str(code), "dtype": args.dtype})
    torch.manual_seed(0)
    theirs, cfg = _official_encoder(code)
    ours = SlideEncoder.from_exaone_path(theirs.state_dict()).eval().to(device)
    theirs = theirs.to(device)
    rec.data["meta"]["config"] = cfg
    for n in map(int, args.tokens.split(",")):
        feats, coords, frag = _slide(n, args.fragments, ours.config.input_dim)
        fd, cd, gd = feats.to(device), coords.to(device), frag.to(device)
        outs = {}

        def run_ours(fd=fd, cd=cd, gd=gd):
            with torch.inference_mode(), _autocast(device, args.dtype):
                return ours.encode(fd, cd, gd)["slide_embedding"].float()

        def run_theirs(fd=fd, cd=cd, gd=gd, n=n):
            with torch.inference_mode(), _autocast(device, args.dtype):
                return theirs(fd[None], torch.ones(1, n, dtype=torch.bool, device=device), cd[None],
                              gd[None])["slide_embedding"][0].float()

        for name, fn in (("pathalign", run_ours), ("official", run_theirs)):
            res = _measure(fn, device, args.repeats)
            outs[name] = res.pop("out", None)
            rec.add({"tokens": n, "fragments": args.fragments, "impl": name, **res})
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if outs["pathalign"] is not None and outs["official"] is not None:
            a, b = outs["pathalign"], outs["official"]
            err = float((a - b).norm() / b.norm().clamp_min(1e-30))
            rec.add({"tokens": n, "impl": "pathalign vs official", "rel_err": err, "equal": err < BF16_RTOL,
                     "tolerance": BF16_RTOL})


# ------------------------------------------------------------------ kernel
def run_kernel(args) -> None:
    from pathalign.models import SLIDE_ENCODER_PRESETS
    from pathalign.models.attention import ATTENTION_BACKENDS, choose_backend
    from pathalign.models.packing import Segments

    device = torch.device(args.device)
    cfg = SLIDE_ENCODER_PRESETS.get(args.preset)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    backend = choose_backend("auto", device, dtype)
    rec = Recorder(args.json, "kernel", {**_meta(device), "backend": backend, "peak_tflops": args.peak_tflops})
    for n in map(int, args.tokens.split(",")):
        t = n + cfg.n_prefix
        q, k, v = (torch.randn(t, cfg.num_heads, cfg.head_dim, device=device, dtype=dtype) for _ in range(3))
        seg = Segments([t])  # a NoPE block: the whole slide is one segment
        res = _measure(lambda q=q, k=k, v=v, seg=seg: ATTENTION_BACKENDS.get(backend)(q, k, v, seg), device,
                       args.repeats)
        res.pop("out", None)
        if res["outcome"] == "ok":
            flops = 4.0 * t * t * cfg.num_heads * cfg.head_dim  # QK^T and PV: 2 multiply-adds per entry each
            res["tflops"] = flops / res["seconds"] / 1e12
            res["share_of_peak"] = res["tflops"] / args.peak_tflops
        rec.add({"tokens": n, **res})


# ------------------------------------------------------------------ extract
def run_extract(args) -> None:
    from pathalign.slides.extract import PatchDataset, extract_features
    from pathalign.slides.patch_encoders import build_patch_encoder
    from pathalign.slides.reader import open_slide

    device = torch.device(args.device)
    rec = Recorder(args.json, "extract", {**_meta(device), "slide": str(args.slide)})
    with open_slide(args.slide, "auto") as s:
        w, h = s.level_dimensions[0]
    for name in args.encoders.split(","):
        overrides = {"depth": 1} if args.device == "cpu" else {}  # a CPU smoke run needs no full ViT
        enc = build_patch_encoder(name, device=args.device, pretrained=False, **overrides)
        size = args.patch_size  # read at level 0; the encoder's transform resizes it
        rng = np.random.default_rng(0)
        coords = np.stack([rng.integers(0, max(1, w - size), args.patches),
                           rng.integers(0, max(1, h - size), args.patches)], 1)
        ds = PatchDataset(args.slide, coords, 0, size, size, "auto")
        res = _measure(lambda enc=enc, ds=ds: extract_features(enc, ds, args.batch_size, args.workers, device,
                                                               progress=False), device, 1)
        res.pop("out", None)
        if res["outcome"] == "ok":
            res["patches_per_s"] = args.patches / res["seconds"]
        rec.add({"encoder": name, "patches": args.patches, "workers": args.workers, "batch_size": args.batch_size,
                 **res})
        del enc


# ------------------------------------------------------------------ train-step
def run_train_step(args) -> None:
    from pathalign.models import SlideEncoder
    from pathalign.models.pair_heads import PairHeads
    from pathalign.models.siglip import MultimodalSigLIPLoss

    device = torch.device(args.device)
    rec = Recorder(args.json, "train-step", {**_meta(device), "preset": args.preset, "dtype": args.dtype})
    torch.manual_seed(0)
    enc = SlideEncoder.from_preset(args.preset).to(device).train()
    enc.checkpoint_activations = True
    heads = PairHeads({"wsi": enc.config.output_dim, "rna": 64}, proj_dim=64).to(device)
    loss_fn = MultimodalSigLIPLoss()
    opt = torch.optim.AdamW([*enc.parameters(), *heads.parameters()], lr=1e-4)
    slides = [_slide(args.tokens, args.fragments, enc.config.input_dim, seed=s) for s in range(args.slides)]
    rna = torch.randn(args.slides, 64, device=device)
    valid = {m: torch.ones(args.slides, dtype=torch.bool, device=device) for m in ("wsi", "rna")}

    def step():
        with _autocast(device, args.dtype):
            z = enc(slides)
            out = loss_fn(heads({"wsi": z, "rna": rna}, valid))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        return out.loss.detach()

    res = _measure(step, device, args.repeats)
    loss = res.pop("out", None)
    if loss is not None:
        res["loss"] = float(loss)
    rec.add({"slides": args.slides, "tokens_per_slide": args.tokens, "checkpoint_activations": True, **res})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="stage", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--device", default="cuda")
    common.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    common.add_argument("--repeats", type=int, default=2, help="timed runs after one warm-up (median)")
    common.add_argument("--json", default=None, help="write the rows here (rewritten after each)")
    common.add_argument("--preset", default="exaone-path-2.5", help="slide-encoder preset")
    common.add_argument("--fragments", type=int, default=64)
    s = sub.add_parser("official", parents=[common])
    s.add_argument("--exaone-code", default=os.environ.get("EXAONE_PATH_CODE", "../EXAONE-Path-2.5"),
                   help="checkout of LG-AI-EXAONE/EXAONE-Path-2.5 (default $EXAONE_PATH_CODE or ../EXAONE-Path-2.5)")
    s.add_argument("--tokens", default="16384,50000,100000")
    s = sub.add_parser("kernel", parents=[common])
    s.add_argument("--tokens", default="16384,50000,100000")
    s.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU (H100/H200 SXM: 989)")
    s = sub.add_parser("extract", parents=[common])
    s.add_argument("--slide", required=True)
    s.add_argument("--encoders", default="exaone-path-2.5,uni")
    s.add_argument("--patches", type=int, default=2048)
    s.add_argument("--patch-size", type=int, default=256, help="px read per patch at level 0")
    s.add_argument("--batch-size", type=int, default=256)
    s.add_argument("--workers", type=int, default=8)
    s = sub.add_parser("train-step", parents=[common])
    s.add_argument("--tokens", type=int, default=50000)
    s.add_argument("--slides", type=int, default=4)
    args = p.parse_args(argv)
    {"official": run_official, "kernel": run_kernel, "extract": run_extract, "train-step": run_train_step}[args.stage](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
