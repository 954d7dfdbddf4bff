"""``sparsecodes bench train``: training throughput of every kind against a plain-PyTorch TopK loop.

The reference is the smallest honest TopK SAE step (encode, top-k, decode, MSE, Adam) with none of the
project's machinery. Every kind runs through the project's own ``train_step`` (hooks, clipping,
schedule). Timings are interleaved over rounds and the median is kept, so the ratios compare runs made
under the same machine load.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from sparsecodes.fsutil import write_json
from sparsecodes.train.config import TrainConfig
from sparsecodes.train.models import Progress, build, kinds, make_config, model_class
from sparsecodes.train.trainer import lr_lambda, train_step

TARGETS = {
    "topk": ("reference", 1.1),
    "vaease": ("topk", 1.5),
    "vaease-linear": ("topk", 1.5),
    "softsae": ("topk", 2.0),
}
"""kind → (what it is compared with, the largest allowed slowdown)."""
VARIANTS = {"vaease-linear": ("vaease", {"hidden": []})}
"""Bench-only rows: a kind with other options (VAEase with linear heads on x, no hidden layer)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--d-in", type=int, default=384)
    p.add_argument("--d-sae", type=int, default=4096)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--steps", type=int, default=5, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median is reported")
    p.add_argument("--kinds", default=",".join(["reference", *kinds_for_bench()]))
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", type=Path, default=Path("bench-results/train.json"))


def kinds_for_bench() -> list[str]:
    return [*kinds(), *VARIANTS]


class ReferenceTopK(torch.nn.Module):
    """Plain TopK SAE, written the obvious way."""

    def __init__(self, d_in: int, d_sae: int, k: int) -> None:
        super().__init__()
        self.k = k
        self.W_enc = torch.nn.Parameter(torch.randn(d_sae, d_in) / d_in**0.5)
        self.b_enc = torch.nn.Parameter(torch.zeros(d_sae))
        self.W_dec = torch.nn.Parameter(self.W_enc.data.t().contiguous())
        self.b_dec = torch.nn.Parameter(torch.zeros(d_in))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu((x - self.b_dec) @ self.W_enc.t() + self.b_enc)
        vals, idx = a.topk(self.k, dim=-1, sorted=False)
        z = torch.zeros_like(a).scatter_(-1, idx, vals)
        x_hat = z @ self.W_dec.t() + self.b_dec
        return (x - x_hat).pow(2).sum(-1).mean()


def make_stepper(name: str, args: argparse.Namespace, x: torch.Tensor):
    if name == "reference":
        model = ReferenceTopK(args.d_in, args.d_sae, args.k)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step(i: int) -> None:
            loss = model(x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step
    kind, extra = VARIANTS.get(name, (name, {}))
    options: dict[str, Any] = {"d_sae": args.d_sae, **extra}
    if "k" in {f.name for f in dataclasses.fields(model_class(kind).config_cls)}:
        options["k"] = args.k
    sae = build(make_config(kind, d_in=args.d_in, **options))
    sae.init_from_data_(x)
    cfg = TrainConfig(steps=10_000, epochs=None, batch_size=args.batch_size)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, cfg.steps))

    def step(i: int) -> None:
        # Mid-training progress: SoftSAE is in its soft (LapSum) phase, the costlier one.
        train_step(sae, sae, x, opt, sched, cfg, Progress(step=5000 + i, total_steps=10_000, log=False))

    return step


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, args.d_in) / args.d_in**0.5
    names = [n for n in args.kinds.split(",") if n]
    steppers = {n: make_stepper(n, args, x) for n in names}
    for step in steppers.values():  # warm-up: allocator, kernels, AuxK buffers
        step(0)
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.rounds):
        for n, step in steppers.items():
            t0 = time.perf_counter()
            for i in range(args.steps):
                step(i)
            times[n].append((time.perf_counter() - t0) / args.steps)
    rows = []
    for n in names:
        sec = statistics.median(times[n])
        rows.append({"kind": n, "sec_per_step": sec, "samples_per_s": args.batch_size / sec})
    by = {r["kind"]: r for r in rows}
    for r in rows:
        if r["kind"] in TARGETS and TARGETS[r["kind"]][0] in by:
            base, limit = TARGETS[r["kind"]]
            r["vs"] = base
            r["slowdown"] = r["sec_per_step"] / by[base]["sec_per_step"]
            r["target"] = limit
            r["meets_target"] = r["slowdown"] <= limit
    result = {
        "benchmark": "train",
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "_run")},
        "machine": {
            "cpu_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, result)
    print(
        f"training throughput, d_in={args.d_in} d_sae={args.d_sae} k={args.k} batch={args.batch_size}, "
        f"{torch.get_num_threads()} threads (median of {args.rounds} rounds × {args.steps} steps)"
    )
    print(f"{'kind':<12}{'samples/s':>12}{'ms/step':>10}  vs          slowdown  target")
    for r in rows:
        extra = (
            f"  {r['vs']:<10}{r['slowdown']:>9.2f}×  ≤{r['target']}× {'ok' if r['meets_target'] else 'MISSED'}"
            if "vs" in r
            else ""
        )
        print(f"{r['kind']:<12}{r['samples_per_s']:>12.0f}{r['sec_per_step'] * 1e3:>10.1f}{extra}")
    print(f"wrote {args.out}")
    return 0
