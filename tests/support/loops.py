"""Small helpers the model tests share: a low-rank data set and a minimal Adam loop that honours the
interface's optimiser hooks (the trainer's contract) without the trainer's machinery."""

from __future__ import annotations

from collections.abc import Callable

import torch

from sparsecodes.train.models import Progress, SparseAutoencoder


def low_rank(n: int, d_in: int, rank: int, seed: int = 0) -> torch.Tensor:
    """``n`` rows on a random ``rank``-dim subspace of R^d_in, centred, mean squared norm 1."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, rank, generator=g) @ torch.randn(rank, d_in, generator=g)
    x = x - x.mean(dim=0)
    return x / x.pow(2).sum(dim=-1).mean().sqrt()


def adam_loop(
    model: SparseAutoencoder,
    x: torch.Tensor,
    steps: int,
    lr: float = 1e-2,
    batch: int = 256,
    *,
    seed: int = 1,
    clip: float | None = None,
    schedule: Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler] | None = None,
) -> SparseAutoencoder:
    """Adam on random batches of ``x`` with the before/after-step hooks; returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = schedule(opt) if schedule is not None else None
    model.init_from_data_(x[:batch])
    model.train()
    for step in range(steps):
        xb = x[torch.randint(len(x), (batch,), generator=g)]
        out = model(xb, xb, Progress(step=step, total_steps=steps))
        opt.zero_grad()
        out.loss.backward()
        model.before_optimizer_step_()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        model.after_optimizer_step_()
    return model.eval()


def export_and_run_encode(model: SparseAutoencoder, path, x: torch.Tensor):
    """Export ``model.encode`` with torch's dynamo exporter (dynamic batch, traced at batch 3) and run it
    in ONNX Runtime on ``x`` (another batch size); returns ``(onnx_code, torch_code)`` as NumPy arrays."""
    import onnxruntime as ort

    class Encode(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model.encode(x)

    model.eval()  # exported as production exports: the served code, not the training forward
    batch = torch.export.Dim("batch")
    d_in = x.shape[1]
    torch.onnx.export(Encode(), (torch.randn(3, d_in),), str(path), dynamic_shapes=({0: batch},), dynamo=True)
    session = ort.InferenceSession(str(path))
    (code,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    return code, model.encode(x).detach().numpy()
