"""Wall time and peak memory of the slide encoder: default (segment) attention vs the dense-mask reference.

Each measurement runs in a fresh process so that peak memory is its own. On CPU the peak is
the growth of the process's maximum resident set over its size just before the first forward
(``ru_maxrss``); on CUDA it is ``torch.cuda.max_memory_allocated``.

    python benchmarks/slide_encoder.py                      # CPU table, small preset
    python benchmarks/slide_encoder.py --device cuda --preset exaone-path-2.5 --dtype bf16
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time


def random_slide(n: int, n_fragments: int, c: int, seed: int = 0):
    """``n`` patches in ``n_fragments`` square-ish blobs of unequal size on a 256-px grid."""
    import numpy as np
    import torch

    from fragment_layout import fragment_grid  # benchmarks/ is on sys.path when a script there runs

    rng = np.random.default_rng(seed)
    share = rng.uniform(0.3, 1.7, n_fragments)
    sizes = np.maximum(1, np.floor(share / share.sum() * n)).astype(int)
    sizes[0] += n - sizes.sum()
    coords, frag = fragment_grid(sizes, gap=2)
    feats = torch.from_numpy(rng.standard_normal((n, c)).astype(np.float32))
    return feats, torch.from_numpy(coords), torch.from_numpy(frag)


def worker(spec: dict) -> dict:
    """One measurement; returns median seconds and peak memory (bytes)."""
    import torch

    from pathalign.models import SlideEncoder

    torch.manual_seed(0)
    device = torch.device(spec["device"])
    enc = SlideEncoder.from_preset(spec["preset"], attention_backend=spec["backend"]).to(device)
    enc.train(spec["mode"] == "fwd+bwd")
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[spec["dtype"]]
    feats, coords, frag = random_slide(spec["tokens"], spec["fragments"], enc.config.input_dim)
    packed_args = [(feats, coords, frag)]

    grad = spec["mode"] == "fwd+bwd"
    if spec["part"] != "encoder":  # inputs of one RoPE block, prepared outside the timed region
        from pathalign.models.attention import ATTENTION_BACKENDS, choose_backend

        packed = enc.pack(packed_args)
        blk = next(b for b in enc.blocks if b.rope_block)
        x = torch.randn(packed.total, enc.config.dim, device=device, requires_grad=grad)
        rope = enc._rope_tables(packed, device)
        backend = choose_backend(spec["backend"], device, dtype or torch.float32)
        segments = packed.fragment_segments

    def run_once():
        ctx = torch.autocast(device.type, dtype=dtype) if dtype is not None else torch.autocast(device.type, enabled=False)
        with ctx:
            if spec["part"] != "encoder":
                with torch.set_grad_enabled(grad):
                    if spec["part"] == "rope-block":  # whole block: attention + SwiGLU MLP
                        out = blk(x, segments, backend, rope)
                    elif spec["part"] == "rope-attn":  # attention sub-layer: norm, qkv, rotation, attention, proj
                        out = blk.attn(blk.norm1(x), segments, backend, rope)
                    else:  # rope-kernel: the attention kernel alone
                        q = x.view(packed.total, enc.config.num_heads, -1)  # [T,H,Dh]
                        out = ATTENTION_BACKENDS.get(backend)(q, q, q, segments)
                    if grad:
                        out.float().square().mean().backward()
            elif spec["mode"] == "fwd+bwd":
                out = enc.encode_batch(packed_args)[0]["slide_embedding"]
                out.float().square().sum().backward()
            else:
                with torch.no_grad():
                    enc.encode_batch(packed_args)
        if device.type == "cuda":
            torch.cuda.synchronize()

    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    times = []
    run_once()  # warm-up (kernel selection, allocator)
    budget = time.perf_counter() + spec["seconds"]
    while len(times) < spec["repeats"] and (len(times) < 1 or time.perf_counter() < budget):
        t0 = time.perf_counter()
        run_once()
        times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base_cuda
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base_rss
    return {"seconds": statistics.median(times), "runs": len(times), "peak_bytes": int(peak)}


def dense_estimate_gib(tokens: int, heads: int, mode: str) -> float:
    """Rough dense-path footprint on CPU: boolean + float mask (x3 with backward buffers)."""
    t = tokens + 8
    return t * t * 6 * (3 if mode == "fwd+bwd" else 1) / 2**30


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--preset", default="small", help="slide-encoder preset (tiny, small, exaone-path-2.5)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="compute precision (autocast)")
    p.add_argument("--tokens", default="2048,8192,16384,32768", help="comma-separated token counts N")
    p.add_argument("--fragments", default="1,8,64", help="comma-separated fragment counts")
    p.add_argument("--modes", default="fwd,fwd+bwd", help="fwd and/or fwd+bwd")
    p.add_argument("--parts", default="encoder,rope-block,rope-attn,rope-kernel",
                   help="whole encoder; one RoPE block; its attention sub-layer; the attention kernel alone")
    p.add_argument("--backends", default="auto,dense", help="attention backends to compare (auto = default path)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median reported)")
    p.add_argument("--seconds", type=float, default=30.0, help="stop repeating after this many seconds")
    p.add_argument("--max-dense-gib", type=float, default=14.0, help="skip dense runs whose estimated footprint exceeds this")
    p.add_argument("--json", default=None, help="also write all measurements to this JSON file")
    p.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._worker:
        print("RESULT " + json.dumps(worker(json.loads(args._worker))))
        return

    from pathalign.models import SLIDE_ENCODER_PRESETS

    heads = SLIDE_ENCODER_PRESETS.get(args.preset).num_heads
    rows = []
    print(f"# slide encoder benchmark: preset={args.preset} device={args.device} dtype={args.dtype} "
          f"torch threads={os.environ.get('OMP_NUM_THREADS', 'default')} machine={platform.machine()} {os.cpu_count()} cpus")
    header = "| part | mode | N | fragments | default s | dense s | speed-up | default peak MiB | dense peak MiB |"
    print(header + "\n|" + "---|" * 9)
    for part in args.parts.split(","):
        for mode in args.modes.split(","):
            for n in map(int, args.tokens.split(",")):
                for f in map(int, args.fragments.split(",")):
                    res = {}
                    for backend in args.backends.split(","):
                        if backend == "dense" and dense_estimate_gib(n, heads, mode) > args.max_dense_gib:
                            res[backend] = None
                            continue
                        spec = dict(device=args.device, preset=args.preset, dtype=args.dtype, tokens=n, fragments=f,
                                    mode=mode, part=part, backend=backend, repeats=args.repeats, seconds=args.seconds)
                        proc = subprocess.run([sys.executable, __file__, "--_worker", json.dumps(spec)],
                                              capture_output=True, text=True)
                        line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
                        res[backend] = json.loads(line[-1][7:]) if line else {"error": proc.stderr.strip().splitlines()[-1:]}
                        rows.append({**spec, **(res[backend] or {})})
                    d, r = res.get("auto"), res.get("dense")

                    def fmt_s(x):
                        return "skipped" if x is None else ("error" if "error" in x else f"{x['seconds']:.3f}")

                    def fmt_m(x):
                        return "—" if x is None or "error" in x else f"{x['peak_bytes'] / 2**20:.0f}"

                    ratio = f"{r['seconds'] / d['seconds']:.1f}×" if d and r and "error" not in d and "error" not in r else "—"
                    print(f"| {part} | {mode} | {n} | {f} | {fmt_s(d)} | {fmt_s(r)} | {ratio} | {fmt_m(d)} | {fmt_m(r)} |", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
