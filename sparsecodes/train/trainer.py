"""One training loop for every kind: step, evaluate, checkpoint.

What it does: Adam with linear warm-up then linear decay (or warmup-stable-decay, or cosine restarts), global gradient-norm clipping, the kinds' own
hooks around the optimiser step (decoder renormalisation, gradient projection), a held-out evaluation,
tqdm progress with the live loss and L0, determinism under a seed, resumable checkpoints, and
data-parallel training when launched by ``torchrun`` (gloo on CPU, NCCL on GPU).

Data larger than memory: ``data`` may be a shard folder (``sparsecodes activations`` writes them;
:mod:`sparsecodes.train.data.shards`): whole shards are held out, each rank streams its own shards
through a bounded shuffle buffer, the normalisation comes from one verifying pass over the training
shards, and ``--resume`` restarts the stream at the checkpoint's step.

What it does not do: mixed precision, gradient accumulation.

Where files go: training writes into ``OUT.partial/`` (checkpoints live there, so an interrupted run can
``--resume``) and renames it to ``OUT`` when everything, including the report, is written.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from sparsecodes.fsutil import replace_dir, write_json
from sparsecodes.train.config import RunConfig, TrainConfig
from sparsecodes.train.data import load_dataset
from sparsecodes.train.data.base import Dataset
from sparsecodes.train.data.shards import TrainingShards, is_shard_folder
from sparsecodes.train.evaluate import evaluate
from sparsecodes.train.models import Progress, SparseAutoencoder, build, make_config
from sparsecodes.train.models.registry import model_class
from sparsecodes.train.normalization import Normalizer
from sparsecodes.train.report import write_report
from sparsecodes.train.run import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    HELDOUT_FILE,
    METRICS_FILE,
    WEIGHTS_FILE,
    RunError,
    check_state_matches,
    read_config,
    save_heldout,
    save_weights,
)


@dataclass
class History:
    """Loss parts and live statistics, one entry per logged step (for the loss-curve plots)."""

    step: list[int] = field(default_factory=list)
    parts: dict[str, list[float]] = field(default_factory=dict)
    eval: list[dict[str, Any]] = field(default_factory=list)

    def log(self, step: int, parts: dict[str, float]) -> None:
        self.step.append(step)
        for k, v in parts.items():
            self.parts.setdefault(k, []).append(v)

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "parts": self.parts, "eval": self.eval}


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def partial_dir(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


# -- public entry point ------------------------------------------------------------------------------


def train_run(
    kind: str,
    data: str,
    out: str | os.PathLike[str],
    *,
    model: dict[str, Any] | None = None,
    data_options: dict[str, Any] | None = None,
    train: dict[str, Any] | TrainConfig | None = None,
    force: bool = False,
    resume: bool = False,
    show_progress: bool = True,
    expansion_factor: float | None = None,
) -> Path:
    """Train ``kind`` on ``data`` and write a run folder at ``out``; returns its path.

    ``model`` holds the kind's hyperparameters (``d_sae``, ``k``, ``push_ratio`` …; ``d_in`` comes from
    the data), ``data_options`` the data source's options, ``train`` the loop's (:class:`TrainConfig`).
    Without ``d_sae``, ``expansion_factor`` sets it to ``round(expansion_factor · d_in)``.

    Ctrl-C (SIGINT) while training writes a checkpoint at the last finished step and raises
    :class:`TrainingInterrupted`; ``resume=True`` continues from it.
    """
    out = Path(out)
    train_cfg = train if isinstance(train, TrainConfig) else TrainConfig.from_dict(train or {})
    with distributed(train_cfg.device) as info:
        device = _device(train_cfg.device, info)
        _refuse_existing(out, force, resume, info)
        work = partial_dir(out)
        source: torch.Tensor | TrainingShards
        train_set: Dataset | None
        if is_shard_folder(data):
            source = TrainingShards(
                data,
                val_fraction=train_cfg.val_fraction,
                seed=train_cfg.seed,
                rank=info.rank,
                world=info.world,
                all_reduce=_all_reduce_stats if info.world > 1 else None,
                **(data_options or {}),
            )
            train_set, normalizer = None, source.normalizer
            val_set = Dataset("shards", source.val_x, spec=source.spec())
            d_in, spec, input_shape = source.d_in, source.spec(), None
        else:
            dataset = load_dataset(data, **(data_options or {}))
            train_set, val_set = dataset.split(train_cfg.val_fraction, train_cfg.seed)
            normalizer = Normalizer.fit(train_set.x)
            d_in, spec, input_shape = (
                dataset.d_in,
                dataset.spec or {"name": data, **(data_options or {})},
                dataset.input_shape,
            )
            source = torch.from_numpy(normalizer.apply(train_set.x))
        model_options = {k: v for k, v in (model or {}).items() if k not in ("kind", "d_in")}
        model_class(kind)  # an unknown kind is named (with the known ones) before any missing option
        if "d_sae" not in model_options:
            if not expansion_factor or expansion_factor <= 0:
                raise ValueError("the model needs a latent width: pass --d-sae N (or --expansion-factor F)")
            model_options["d_sae"] = max(1, round(expansion_factor * d_in))
        n_train = len(source) if isinstance(source, TrainingShards) else len(train_set)
        # The kind's defaults (docs/methods.md, "Defaults") never set what was used above (device, split).
        model_options, train_opts = with_kind_defaults(kind, d_in, n_train, model_options, train)
        if not isinstance(train, TrainConfig):
            train_cfg = TrainConfig.from_dict(train_opts)
        if info.main:
            warn_if_too_small(n_train, len(val_set), model_options["d_sae"], train_cfg.batch_size)
        sae_cfg = make_config(kind, d_in=d_in, **model_options)
        run_cfg = RunConfig(
            kind=kind,
            model=sae_cfg.to_dict(),
            data=spec,
            train=train_cfg,
            normalization=normalizer.to_dict(),
            input_shape=list(input_shape) if input_shape else None,
        )
        torch.manual_seed(train_cfg.seed)
        sae = build(sae_cfg).to(device)
        if resume:
            check_resume_config(work, run_cfg)
        if info.main:
            work.mkdir(parents=True, exist_ok=True)
            write_json(work / CONFIG_FILE, run_cfg.to_dict())
        try:
            history = fit(sae, source, train_cfg, work, info, resume=resume, show_progress=show_progress)
            if isinstance(source, TrainingShards):  # what each rank actually read, for the run's record
                run_cfg.data["read_by_rank"] = _gather_names(source.read, info)
            if info.main:
                _finish(sae, run_cfg, normalizer, train_set, val_set, history, work, out, force)
        except TrainingInterrupted:
            raise
        except KeyboardInterrupt:
            # Before the first step (or in a distributed run): no checkpoint to resume from.
            if info.main and not resume:
                shutil.rmtree(work, ignore_errors=True)
            raise
        except BaseException:
            # Bad input or a crash: leave nothing half-written behind (checkpoints only survive interrupts).
            if info.main and not resume:
                shutil.rmtree(work, ignore_errors=True)
            raise
    return out


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says where the checkpoint is and how to resume."""


MIN_HELDOUT_ROWS = 20
"""Fewer held-out rows than this and the run's metrics (fvu, L0, probe accuracy) mean little."""


def warn_if_too_small(n_train: int, n_val: int, d_sae: int, batch_size: int) -> None:
    """One warning line on stderr when the data are too small for the model: fewer training rows than
    latents (the model can memorise them) or too few held-out rows for the metrics."""
    problems = []
    if n_train < d_sae:
        problems.append(f"{n_train} training rows for {d_sae} latents (the model can memorise them)")
    if n_val < MIN_HELDOUT_ROWS:
        problems.append(f"{n_val} held-out rows (fewer than {MIN_HELDOUT_ROWS}: fvu and L0 are unreliable)")
    if problems:
        hint = "use more rows or a smaller --d-sae" + (
            f" (each step reuses the whole set: batch {batch_size} > {n_train} rows)" if batch_size > n_train else ""
        )
        print(f"warning: the data are too small for the model: {'; '.join(problems)}; {hint}", file=sys.stderr)


class _StopAtStepBoundary:
    """While active, the first SIGINT only sets a flag that the loop reads between steps, so the checkpoint
    it then writes is consistent (never half an optimiser step); a second SIGINT interrupts at once."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)

    def __enter__(self) -> _StopAtStepBoundary:
        if self.enabled:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled and not self.requested:
            signal.signal(signal.SIGINT, self._previous)


def with_kind_defaults(
    kind: str,
    d_in: int,
    n_rows: int,
    model: dict[str, Any],
    train: dict[str, Any] | TrainConfig | None,
) -> tuple[dict[str, Any], dict[str, Any] | TrainConfig]:
    """The user's model and training options over the kind's :meth:`SparseAutoencoder.defaults` for this
    data (``d_in``, the given ``d_sae``, ``n_rows`` training rows). What the user set always wins; a
    user's ``epochs`` also drops a default ``steps`` (which would otherwise win over it). A ready
    :class:`TrainConfig` is taken as it is."""
    d_sae = model.get("d_sae")
    if not isinstance(d_sae, int) or isinstance(d_sae, bool) or d_sae <= 0:
        return model, train if isinstance(train, TrainConfig) else dict(train or {})  # the config says why
    found = model_class(kind).defaults(d_in, d_sae, n_rows)
    model = {**found.get("model", {}), **model}
    if isinstance(train, TrainConfig):
        return model, train
    user = dict(train or {})
    kind_train = dict(found.get("train", {}))
    if user.get("epochs") is not None and "steps" not in user:
        kind_train.pop("steps", None)
    return model, {**kind_train, **user}


def _refuse_existing(out: Path, force: bool, resume: bool, info: DistInfo) -> None:
    if out.exists() and not force:
        raise RunError(f"{out} already holds a run; pass --force to replace it")
    if resume and not (partial_dir(out) / CHECKPOINT_DIR).is_dir():
        raise RunError(f"nothing to resume: {partial_dir(out) / CHECKPOINT_DIR} does not exist")
    if not resume and info.main and partial_dir(out).exists():
        shutil.rmtree(partial_dir(out))


def _finish(
    sae: SparseAutoencoder,
    run_cfg: RunConfig,
    normalizer: Normalizer,
    train_set: Dataset | None,
    val_set: Dataset,
    history: History,
    work: Path,
    out: Path,
    force: bool,
) -> None:
    sae.eval()
    result = evaluate(sae, normalizer, val_set, train_set)
    run_cfg.extras.update(result.extras_for_config)
    write_json(work / CONFIG_FILE, run_cfg.to_dict())
    save_weights(sae, work / WEIGHTS_FILE)
    save_heldout(val_set, work / HELDOUT_FILE, run_cfg.train.heldout_cap)
    write_json(work / METRICS_FILE, result.metrics)
    write_json(work / "history.json", history.to_dict())
    write_report(work, run_cfg, result, history)
    shutil.rmtree(work / CHECKPOINT_DIR, ignore_errors=True)
    replace_dir(work, out)  # an existing run (only with --force) is swapped out atomically


# -- the loop ----------------------------------------------------------------------------------------


def plan_steps(cfg: TrainConfig, n_rows: int) -> int:
    if cfg.steps is not None:
        return cfg.steps
    assert cfg.epochs is not None
    return max(1, math.ceil(cfg.epochs * n_rows / cfg.batch_size))


def lr_lambda(cfg: TrainConfig, total: int):
    """Learning-rate multiplier per step (a plain function of the step, so checkpoints resume it)."""
    warm = max(1, int(cfg.warmup_frac * total))

    def linear(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        frac = (step - warm) / max(1, total - warm)
        return 1.0 - (1.0 - cfg.lr_end_frac) * frac

    def cosine_restarts(step: int) -> float:
        # SGDR (Loshchilov & Hutter): cycles of length T_0, T_0·T_mult, …; within one, cosine from 1 down.
        period, pos = cfg.restart_period, step
        while pos >= period:
            pos, period = pos - period, period * cfg.restart_mult
        low = cfg.lr_end_frac
        return low + (1 - low) * 0.5 * (1 + math.cos(math.pi * pos / period))

    decay_start = total - max(1, int(cfg.decay_frac * total))

    def wsd(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if step < decay_start:
            return 1.0
        frac = (step - decay_start) / max(1, total - decay_start)
        return 1.0 - (1.0 - cfg.lr_end_frac) * frac

    return {"linear": linear, "cosine_restarts": cosine_restarts, "wsd": wsd}[cfg.lr_schedule]


def fit(
    sae: SparseAutoencoder,
    x_train: torch.Tensor | TrainingShards,
    cfg: TrainConfig,
    work: Path,
    info: DistInfo,
    *,
    resume: bool = False,
    show_progress: bool = True,
) -> History:
    """Optimise ``sae`` on normalised rows ``x_train [N, d_in]`` (or streamed from training shards);
    returns the logged history."""
    device = next(sae.parameters()).device
    total = plan_steps(cfg, len(x_train))
    local_batch = max(1, cfg.batch_size // info.world)
    if isinstance(x_train, TrainingShards):
        sae.init_from_data_(torch.from_numpy(x_train.head(cfg.batch_size)).to(device))
    else:
        gen = torch.Generator().manual_seed(cfg.seed)
        sae.init_from_data_(x_train[torch.randperm(len(x_train), generator=gen)[: cfg.batch_size]].to(device))
    optimizer = torch.optim.Adam(sae.parameters(), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total))
    history, start = History(), 0
    if resume:
        start, history = load_checkpoint(work / CHECKPOINT_DIR, sae, optimizer, scheduler)
    net = DistributedDataParallel(sae, find_unused_parameters=True) if info.world > 1 else sae
    if isinstance(x_train, TrainingShards):
        stream = x_train.stream(local_batch, seed=cfg.seed + 1, skip=start)
        mean = torch.from_numpy(x_train.normalizer.mean).to(device)
        scale = x_train.normalizer.scale
        rows = stream.batches()
        next_batch = lambda: (next(rows).to(device, non_blocking=True) - mean) / scale  # noqa: E731
    else:
        stream = None
        batches = BatchStream(len(x_train), cfg.batch_size, seed=cfg.seed + 1, skip=start)
        tensor = x_train

        def next_batch() -> torch.Tensor:
            idx = batches.next()[info.rank * local_batch : (info.rank + 1) * local_batch]
            return tensor[idx].to(device, non_blocking=True)

    bar = tqdm(
        range(start, total),
        total=total,
        initial=start,
        desc=f"train {sae.cfg.kind}",
        disable=not (show_progress and info.main),
        dynamic_ncols=True,
    )
    log_every = max(1, total // 200)
    # Distributed runs keep Python's default (every rank must stop at the same step to checkpoint).
    try:
        with _StopAtStepBoundary(info.world == 1) as stop:
            for step in bar:
                if stop.requested:
                    bar.close()
                    save_checkpoint(work / CHECKPOINT_DIR, sae, optimizer, scheduler, step, history)
                    raise TrainingInterrupted(
                        f"checkpoint at step {step} of {total} in {work}; rerun with --resume to continue"
                    )
                x = next_batch()
                logged = step % log_every == 0 or step == total - 1
                parts = train_step(net, sae, x, optimizer, scheduler, cfg, Progress(step, total, log=logged))
                if logged:
                    history.log(step, parts)
                    bar.set_postfix({k: f"{parts[k]:.4g}" for k in ("loss", "l0", "k_hat") if k in parts})
                if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < total and info.main:
                    save_checkpoint(work / CHECKPOINT_DIR, sae, optimizer, scheduler, step + 1, history)
    finally:
        if stream is not None:
            stream.close()  # stops the prefetch thread
    bar.close()
    return history


def train_step(
    net: torch.nn.Module,
    sae: SparseAutoencoder,
    x: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    cfg: TrainConfig,
    progress: Progress,
) -> dict[str, float]:
    sae.train()
    out = net(x, x, progress)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    sae.before_optimizer_step_()
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(sae.parameters(), cfg.grad_clip)
    optimizer.step()
    scheduler.step()
    sae.after_optimizer_step_()
    if not progress.log:
        return {}
    parts = {"loss": float(out.loss.detach())}
    parts.update({k: float(v) for k, v in out.parts.items()})
    parts["l0"] = float((out.code != 0).sum(-1).float().mean())
    if "k_hat" in out.extras:
        parts["k_hat"] = float(out.extras["k_hat"].float().mean())
    return parts


class BatchStream:
    """Seeded epoch-wise permutations cut into batches; ``skip`` replays the first batches so a resumed
    run sees the batch order an uninterrupted run would have seen."""

    def __init__(self, n: int, batch_size: int, seed: int, skip: int = 0) -> None:
        self.n, self.batch_size = n, min(batch_size, n)
        self.gen = torch.Generator().manual_seed(seed)
        self.perm = torch.randperm(n, generator=self.gen)
        self.pos = 0
        for _ in range(skip):
            self.next()

    def next(self) -> torch.Tensor:
        if self.pos + self.batch_size > self.n:
            self.perm, self.pos = torch.randperm(self.n, generator=self.gen), 0
        idx = self.perm[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx


# -- checkpoints -------------------------------------------------------------------------------------


def save_checkpoint(folder: Path, sae, optimizer, scheduler, step: int, history: History) -> None:
    """Weights as safetensors; optimiser/scheduler state as tensors-only ``torch.save`` (loaded with
    ``weights_only=True``, so nothing is unpickled but plain containers and tensors)."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_weights(sae, tmp / WEIGHTS_FILE)
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "step": step,
        },
        tmp / "state.pt",
    )
    write_json(tmp / "history.json", history.to_dict())
    replace_dir(tmp, folder)


def load_checkpoint(folder: Path, sae, optimizer, scheduler) -> tuple[int, History]:
    weights = folder / WEIGHTS_FILE
    state = load_file(str(weights))
    check_state_matches(sae, state, weights)
    sae.load_state_dict(state)
    other = torch.load(folder / "state.pt", weights_only=True)
    optimizer.load_state_dict(other["optimizer"])
    scheduler.load_state_dict(other["scheduler"])
    torch.set_rng_state(other["rng"])  # the kinds' own sampling (VAE ε, DAE noise) continues identically
    h = json.loads((folder / "history.json").read_text())
    return int(other["step"]), History(step=h["step"], parts=h["parts"], eval=h.get("eval", []))


def check_resume_config(work: Path, run_cfg: RunConfig) -> None:
    """A resumed run must have the checkpoint's kind and model (``d_in`` from the data included): resuming
    other hyperparameters onto its weights would silently train a different model."""
    saved = read_config(work)
    if saved.kind != run_cfg.kind:
        raise RunError(f"{work / CONFIG_FILE}: checkpoint is of kind {saved.kind!r}, not {run_cfg.kind!r}")
    changed = {k: (saved.model.get(k), v) for k, v in run_cfg.model.items() if saved.model.get(k) != v}
    if changed:
        what = ", ".join(f"{k}: checkpoint {old!r}, now {new!r}" for k, (old, new) in sorted(changed.items()))
        raise RunError(f"{work / CONFIG_FILE}: the model differs from the checkpoint's ({what})")


# -- devices and processes ---------------------------------------------------------------------------


def _device(name: str, info: DistInfo) -> torch.device:
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RunError(f"device {name!r} requested but CUDA is not available; use --device cpu")
        if info.world > 1:
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", info.rank)))
    elif name != "cpu":
        raise RunError(f"unknown device {name!r}; expected cpu, cuda or cuda:N")
    return torch.device(name)


def _all_reduce_stats(n: int, sx: np.ndarray, sq: float, failed: bool) -> tuple[int, np.ndarray, float, int]:
    """Sum (rows, Σx, Σ‖x‖², refusals) over the ranks (float64)."""
    t = torch.from_numpy(np.concatenate([[float(n), sq, float(failed)], sx]))
    dist.all_reduce(t)
    a = t.numpy()
    return int(a[0]), a[3:], float(a[1]), int(a[2])


def _gather_names(names: set[str], info: DistInfo) -> list[list[str]]:
    """Each rank's set of names, sorted, in rank order."""
    if info.world == 1:
        return [sorted(names)]
    out: list[Any] = [None] * info.world
    dist.all_gather_object(out, sorted(names))
    return out


@contextmanager
def distributed(device: str):
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); a no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield DistInfo()
        return
    backend = "nccl" if device.startswith("cuda") else "gloo"
    dist.init_process_group(backend=backend)
    try:
        yield DistInfo(rank=dist.get_rank(), world=dist.get_world_size())
    finally:
        dist.barrier()
        dist.destroy_process_group()
