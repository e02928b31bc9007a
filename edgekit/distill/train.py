"""The training loop shared by distillation and quantization-aware distillation: KL(teacher ‖ student)
at a temperature, optionally mixed with cross-entropy on the data; AdamW with linear warmup and
cosine decay; gradient accumulation; periodic checkpoints that `resume` continues exactly; optional
early stopping (a held-out score every `eval_every` steps, the best parameters restored at the end)
and a wall-clock limit.

Under `torchrun` (WORLD_SIZE > 1) each process takes its share of every global batch and PyTorch's
DistributedDataParallel averages the gradients (gloo on CPUs, nccl on GPUs), so the run equals one
process with the same global batch."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from ..errors import EdgekitError

CHECKPOINT = "checkpoint.pt"
Progress = Callable[[int, int, dict[str, float]], None]  # (step, steps, {"loss":…, "tokens_per_s":…})
Validate = Callable[[int], float]  # step -> held-out score, lower is better


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 200
    batch_size: int = 8  # sequences per optimizer step, over all processes
    accumulation: int = 1  # micro-batches per process and step
    learning_rate: float = 1e-4
    warmup: int = 10
    weight_decay: float = 0.0
    temperature: float = 2.0
    ce_weight: float = 0.0  # 0 = pure KL; 1 = pure cross-entropy on the data
    checkpoint_every: int = 0  # steps; 0 = only at the end
    seed: int = 0
    eval_every: int = 0  # steps between held-out scores (with a `validate`); 0 = none, the last step's weights
    time_limit: float = 0.0  # seconds of training after which the run stops early; 0 = none

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.accumulation < 1:
            raise EdgekitError("steps, batch size and accumulation must be at least 1")
        if not 0 <= self.ce_weight <= 1:
            raise EdgekitError(f"--ce-weight {self.ce_weight} must be in [0, 1]")
        if self.temperature <= 0:
            raise EdgekitError(f"--temperature {self.temperature} must be > 0")
        if self.eval_every < 0 or self.time_limit < 0:
            raise EdgekitError("eval_every and time_limit must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def distributed() -> tuple[int, int]:
    """(rank, world size); starts the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world


def learning_rate(step: int, config: TrainConfig, elapsed: float = 0.0) -> float:
    """Linear warmup to the peak, then cosine decay to a tenth of it, over the steps or, under a time
    limit, over whichever of the steps and the time (`elapsed`: seconds of training) runs out first."""
    if step < config.warmup:
        return config.learning_rate * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    if config.time_limit:
        progress = max(progress, elapsed / config.time_limit)
    return config.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, ids: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """Per token: T² · KL(softmax(teacher/T) ‖ softmax(student/T)), mixed with next-token CE."""
    t = config.temperature
    s_log = F.log_softmax(student[:, :-1] / t, dim=-1)
    t_log = F.log_softmax(teacher[:, :-1] / t, dim=-1)
    kl = (t_log.exp() * (t_log - s_log)).sum(-1).mean() * t * t
    if config.ce_weight == 0:
        return kl
    ce = F.cross_entropy(student[:, :-1].reshape(-1, student.shape[-1]), ids[:, 1:].reshape(-1))
    return (1 - config.ce_weight) * kl + config.ce_weight * ce


def batch_order(count: int, steps: int, batch: int, seed: int) -> np.ndarray:
    """Which sequence each slot of each global batch takes: epochs of seeded permutations."""
    need = steps * batch
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(count) for _ in range(-(-need // count))])
    return order[:need].reshape(steps, batch)


def train(
    student: nn.Module,
    teacher: nn.Module,
    params: Sequence[nn.Parameter] | Sequence[dict[str, Any]],
    sequences: Sequence[Sequence[int]],
    config: TrainConfig,
    work: Path,
    *,
    resume: bool = False,
    progress: Progress | None = None,
    validate: Validate | None = None,
) -> list[float]:
    """Train `params` of `student` toward `teacher` on `sequences` (equal lengths). Returns the loss
    of every step (averaged over processes). Checkpoints go to work/checkpoint.pt. `params` may be
    parameter groups, {"params": [...], "lr_scale": x}: that group's learning rate is x times the
    schedule's.

    With `validate` and `config.eval_every`, the score is taken before the first step, every
    `eval_every` steps and after the last one, and `params` end as they were at the best score (the
    untrained ones when no step helped). `config.time_limit` ends the run after the step that
    crosses it (then scored too), the learning rate decaying over the time when it is shorter than
    the steps."""
    rank, world = distributed()
    if config.batch_size % (world * config.accumulation):
        raise EdgekitError(
            f"batch size {config.batch_size} must split evenly over {world} processes x {config.accumulation} "
            "micro-batches"
        )
    if len({len(s) for s in sequences}) != 1:
        raise EdgekitError("training sequences must all have the same length")
    torch.manual_seed(config.seed)
    model: nn.Module = student
    if world > 1:
        model = nn.parallel.DistributedDataParallel(student)
    groups = [g if isinstance(g, dict) else {"params": [g]} for g in params]
    params = [p for g in groups for p in g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=config.learning_rate, weight_decay=config.weight_decay)
    losses: list[float] = []
    start_step = 0
    scoring = validate is not None and config.eval_every > 0
    best: dict[str, Any] = {}  # {"score", "step", "params"}: the best held-out score so far

    def score(step: int) -> None:
        value = validate(step)  # type: ignore[misc]
        if not best or value < best["score"]:
            best.update(score=value, step=step, params=[p.detach().clone() for p in params])

    saved = work / CHECKPOINT
    if resume:
        if not saved.is_file():
            raise EdgekitError(f"{saved}: no checkpoint to resume from; run without --resume first")
        state = torch.load(saved, weights_only=False)
        student.load_state_dict(state["student"])
        optimizer.load_state_dict(state["optimizer"])
        start_step, losses = state["step"], state["losses"]
        best = state.get("best", best)
    order = batch_order(len(sequences), config.steps, config.batch_size, config.seed)
    data = torch.tensor(np.asarray(sequences, dtype=np.int64))
    local = config.batch_size // world
    micro = local // config.accumulation
    teacher.eval()
    if scoring and start_step == 0:
        score(0)
    began = time.perf_counter()
    for step in range(start_step, config.steps):
        started = time.perf_counter()
        elapsed = started - began
        if config.time_limit and world > 1:  # one schedule: rank 0's clock
            import torch.distributed as dist

            clock = torch.tensor([elapsed], dtype=torch.float64)
            dist.broadcast(clock, 0)
            elapsed = float(clock.item())
        rate = learning_rate(step, config, elapsed)
        for group in optimizer.param_groups:
            group["lr"] = rate * group.get("lr_scale", 1.0)
        mine = order[step][rank * local : (rank + 1) * local]
        total = torch.zeros(())
        for m in range(config.accumulation):
            ids = data[mine[m * micro : (m + 1) * micro]]
            with torch.no_grad():
                target = teacher(ids)
            loss = distill_loss(model(ids), target, ids, config) / config.accumulation
            loss.backward()
            total += loss.detach()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if world > 1:
            import torch.distributed as dist

            dist.all_reduce(total)
            total /= world
        losses.append(float(total))
        if progress and rank == 0:
            speed = config.batch_size * data.shape[1] / (time.perf_counter() - started)
            progress(step + 1, config.steps, {"loss": losses[-1], "tokens_per_s": speed})
        out_of_time = bool(config.time_limit) and time.perf_counter() - began >= config.time_limit
        if config.time_limit and world > 1:  # every process stops at rank 0's step
            import torch.distributed as dist

            flag = torch.tensor([float(out_of_time)])
            dist.broadcast(flag, 0)
            out_of_time = bool(flag.item())
        done = step + 1 == config.steps or out_of_time
        if scoring and (done or (step + 1) % config.eval_every == 0):
            score(step + 1)
        if rank == 0 and (done or (config.checkpoint_every and (step + 1) % config.checkpoint_every == 0)):
            work.mkdir(parents=True, exist_ok=True)
            state = {"student": student.state_dict(), "optimizer": optimizer.state_dict(), "step": step + 1}
            state |= {"best": best} if best else {}
            torch.save({**state, "losses": losses, "config": config.to_dict()}, work / (CHECKPOINT + ".tmp"))
            os.replace(work / (CHECKPOINT + ".tmp"), saved)
        if done:
            break
    if best:
        with torch.no_grad():
            for p, kept in zip(params, best["params"], strict=True):
                p.copy_(kept)
    return losses


@torch.no_grad()
def held_out(student: nn.Module, teacher: nn.Module, sequences: Sequence[Sequence[int]]) -> dict[str, float]:
    """Perplexity of the student on held-out sequences, and KL(teacher ‖ student) per token."""
    nll, kl, count = 0.0, 0.0, 0
    for seq in sequences:
        ids = torch.tensor([list(seq)])
        s_log = F.log_softmax(student(ids)[0, :-1].double(), -1)
        t_log = s_log if teacher is student else F.log_softmax(teacher(ids)[0, :-1].double(), -1)
        nll -= float(s_log.gather(1, ids[0, 1:, None]).sum())
        kl += float((t_log.exp() * (t_log - s_log)).sum())
        count += len(seq) - 1
    return {"perplexity": math.exp(nll / count), "kl": kl / count, "tokens": count}


class HeldOutScorer:
    """Perplexity of a student on fixed held-out sequences and KL(teacher ‖ student) per token, with
    the teacher's log-probabilities computed once (for scoring during training)."""

    def __init__(self, teacher: nn.Module, sequences: Sequence[Sequence[int]], chunk: int = 4):
        groups: list[list[list[int]]] = []  # consecutive sequences of one length, `chunk` at a time
        for s in sequences:
            if groups and len(groups[-1]) < chunk and len(groups[-1][0]) == len(s):
                groups[-1].append(list(s))
            else:
                groups.append([list(s)])
        self.chunks = [torch.tensor(g) for g in groups]
        with torch.no_grad():
            self.teacher = [F.log_softmax(teacher(ids)[:, :-1].float(), -1) for ids in self.chunks]
        nll = sum(
            float(t.gather(-1, ids[:, 1:, None]).double().sum())
            for ids, t in zip(self.chunks, self.teacher, strict=True)
        )
        self.teacher_perplexity = math.exp(-nll / sum(ids[:, 1:].numel() for ids in self.chunks))

    @torch.no_grad()
    def __call__(self, student: nn.Module) -> dict[str, float]:
        nll, kl, count = 0.0, 0.0, 0
        for ids, t_log in zip(self.chunks, self.teacher, strict=True):
            s_log = F.log_softmax(student(ids)[:, :-1].float(), -1)
            nll -= float(s_log.gather(-1, ids[:, 1:, None]).double().sum())
            kl += float((t_log.exp() * (t_log - s_log)).sum(-1).double().sum())
            count += ids[:, 1:].numel()
        return {"perplexity": math.exp(nll / count), "kl": kl / count, "tokens": count}
