"""Learning-rate schedule: warmup, then exponential (RWKV's default) or cosine decay from lr_init to lr_final.

The learning rate is a function of the optimizer step count alone (steps completed before the current one), so it
is the same with or without gradient accumulation and after a resume. For optimizer step s (0-based) of a run of
S steps with W warmup steps:

    p      = clamp((s - W) / (S - 1 - W), 0, 1)                       decay progress (0 at the first step after
                                                                      warmup, 1 at the last step)
    exp:   lr = lr_init * (lr_final / lr_init) ** p                   (linear when lr_final is 0, as RWKV does)
    cos:   lr = lr_final + (lr_init - lr_final) * (1 + cos(pi p)) / 2
    equal lr_init and lr_final: constant
    s < W: lr *= 0.2 + 0.8 * s / W                                    (RWKV's warmup multiplier)

Each parameter group then gets lr * group["my_lr_scale"] (RWKV's layerwise lr, e.g. 2x for time_decay).
"""
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LRSchedule:
    lr_init: float
    lr_final: float
    total_steps: int
    warmup_steps: int = 0
    kind: str = "exp"  # "exp" or "cos"

    def __post_init__(self):
        if self.kind not in ("exp", "cos"):
            raise ValueError(f"lr schedule kind must be 'exp' or 'cos', got {self.kind!r}")
        if self.total_steps < 1:
            raise ValueError(f"the run has {self.total_steps} optimizer steps; it needs at least one")

    @property
    def warmup(self) -> int:
        return max(self.warmup_steps, 0)

    def progress(self, step: int) -> float:
        """Decay progress p in [0, 1] at optimizer step `step`."""
        span = self.total_steps - 1 - self.warmup
        if span <= 0:
            return 1.0 if step >= self.warmup else 0.0
        return min(1.0, max(0.0, (step - self.warmup) / span))

    def lr_at(self, step: int) -> float:
        """Learning rate of optimizer step `step` (0-based count of the steps already taken)."""
        if self.lr_final == self.lr_init:
            lr = self.lr_init
        else:
            p = self.progress(step)
            if self.kind == "cos":
                lr = self.lr_final + (self.lr_init - self.lr_final) * 0.5 * (1.0 + math.cos(math.pi * p))
            elif self.lr_final == 0:
                lr = self.lr_init * (1.0 - p)
            else:
                lr = self.lr_init * math.exp(math.log(self.lr_final / self.lr_init) * p)
        if step < self.warmup:
            lr *= 0.2 + 0.8 * step / self.warmup
        return lr

    def apply(self, optimizer, step: int) -> float:
        """Set every parameter group of `optimizer` to lr_at(step) x its my_lr_scale; returns lr_at(step)."""
        lr = self.lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("my_lr_scale", 1.0)
        return lr
