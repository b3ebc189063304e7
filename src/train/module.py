"""The LightningModule that trains an RWKV6 or RWKV-7 model: the loss of src/train/loss.py (in one pass, or in
chunks of --chunk_ctx tokens through src/train/infctx.py), optimizer groups, lr.
"""
import dataclasses
import re
from typing import Optional

import pytorch_lightning as pl
import torch
import torch.nn as nn

from src.data.dataset import ignore_sigterm_in_worker
from src.peft.state import initial_state_for
from src.train.infctx import chunked_loss
from src.train.loss import L2Wrap, masked_cross_entropy
from src.train.schedule import LRSchedule


class NonFiniteLossError(RuntimeError):
    """Raised on every rank when a loss is NaN or infinite; names where it happened."""


# RWKV-7 (x070) time-mix parameters that are not `.weight` matrices: the (1,1,C) mixes and biases, the (in, out)
# w/a/v/g mini-LoRA matrices and the (H, N) bonus r_k. RWKV-LM's train_temp gives none of them weight decay
# (its decay group is ">= 2-D and '.weight' in the name"); adapter tensors (Bone blocks, LoRA factors) still decay.
X070_MIXING = re.compile(r"(^|\.)att\.(x_[rwkvag]|[wav]0|[wavg][12]|k_k|k_a|r_k)$|(^|\.)ffn\.x_k$")


def lr_scale_of(name: str, layerwise_lr: bool) -> float:
    """RWKV's layerwise lr: RWKV6's time_decay (not its _w1/_w2 mini-LoRA) and RWKV-7's decay bias att.w0 (not
    w1/w2) train at 2x, everything else at 1x."""
    if layerwise_lr and "time_decay" in name and not name.endswith(("_w1", "_w2")):
        return 2.0
    if layerwise_lr and (name == "att.w0" or name.endswith(".att.w0")):
        return 2.0
    return 1.0


def decays_weight(name: str, param) -> bool:
    """Whether weight decay applies: tensors with 2 or more non-unit dims (weights, Bone blocks, LoRA factors),
    but never RWKV6's time_* parameters nor RWKV-7's time-mix parameters (X070_MIXING: w1..g2, r_k)."""
    return param.squeeze().dim() >= 2 and "time_" not in name and not X070_MIXING.search(name)


def optimizer_groups(named_parameters, weight_decay: float, layerwise_lr: bool) -> list:
    """Trainable parameters grouped by (lr scale, weight decay), as RWKV groups them: weight decay as
    `decays_weight` says, 2x lr as `lr_scale_of` says (with layerwise_lr)."""
    groups = {}
    for name, param in named_parameters:
        if not param.requires_grad:
            continue
        scale = lr_scale_of(name, layerwise_lr)
        decays = weight_decay > 0 and decays_weight(name, param)
        decay = weight_decay if decays else 0.0
        group = groups.setdefault((scale, decay), {"params": [], "my_lr_scale": scale, "weight_decay": decay})
        group["params"].append(param)
    if not groups:
        raise ValueError("nothing to train: no parameter requires a gradient (check --peft and --train_parts)")
    return list(groups.values())


@dataclasses.dataclass
class OptimizerSpec:
    name: str  # "adamw" or "adam"
    lr: float
    betas: tuple
    eps: float
    weight_decay: float
    layerwise_lr: bool
    use_fused_adam: bool = False  # DeepSpeed FusedAdam (DeepSpeed on GPU)
    use_cpu_adam: bool = False  # DeepSpeedCPUAdam (ZeRO-Offload on GPU)


def build_optimizer(named_parameters, spec: OptimizerSpec):
    """AdamW/Adam over the trainable parameters: torch's on CPU, DeepSpeed's FusedAdam/CPUAdam on GPU."""
    groups = optimizer_groups(named_parameters, spec.weight_decay, spec.layerwise_lr)
    adamw = spec.name == "adamw"
    common = dict(lr=spec.lr, betas=spec.betas, eps=spec.eps)
    if spec.use_cpu_adam:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, adamw_mode=adamw, bias_correction=True, **common)
    if spec.use_fused_adam:
        from deepspeed.ops.adam import FusedAdam

        return FusedAdam(groups, adam_w_mode=adamw, bias_correction=True, **common)
    return (torch.optim.AdamW if adamw else torch.optim.Adam)(groups, **common)


class RWKVTrainModule(pl.LightningModule):
    """Wraps an RWKV6 (adapted or not) for Lightning.

    step_offset / start_epoch / start_batch place a resumed run: optimizer steps already taken, the absolute
    epoch the first Lightning epoch stands for, and how many of its micro-batches were already trained.
    chunk_ctx: train each sample in chunks of that many tokens with the state carried (src/train/infctx.py);
    None: one pass.
    """

    def __init__(self, model: nn.Module, dataset, schedule: LRSchedule, optimizer_spec: OptimizerSpec,
                 micro_bsz: int, start_epoch: int, step_offset: int = 0, start_batch: int = 0,
                 num_workers: int = 0, chunk_ctx: Optional[int] = None):
        super().__init__()
        self.chunk_ctx = chunk_ctx
        self.model = model
        self.dataset = dataset
        self.schedule = schedule
        self.optimizer_spec = optimizer_spec
        self.micro_bsz = micro_bsz
        self.start_epoch = start_epoch
        self.step_offset = step_offset
        self.start_batch = start_batch
        self.num_workers = num_workers
        self.current_lr = schedule.lr_at(step_offset)
        self.step_losses = []  # this optimizer step's micro-batch losses (detached)

    # ---- position ---------------------------------------------------------------------------------------------
    @property
    def optimizer_step_count(self) -> int:
        """Optimizer steps taken since the start of the whole run (resumes included)."""
        return self.step_offset + self.trainer.global_step

    @property
    def absolute_epoch(self) -> int:
        return self.start_epoch + self.trainer.current_epoch

    def batches_before(self, batch_idx: int) -> int:
        """Micro-batches of the current epoch trained before batch `batch_idx` of this Lightning epoch."""
        return batch_idx + (self.start_batch if self.trainer.current_epoch == 0 else 0)

    # ---- data ---------------------------------------------------------------------------------------------------
    def train_dataloader(self):
        # Called at every epoch start (reload_dataloaders_every_n_epochs=1): the dataset draws per epoch and
        # per rank, and a resumed epoch starts after the samples already trained.
        data_cfg = dataclasses.replace(self.dataset.cfg, world_size=self.trainer.world_size,
                                       rank=self.trainer.global_rank)
        self.dataset.cfg = data_cfg
        skip = self.start_batch * self.micro_bsz if self.trainer.current_epoch == 0 else 0
        self.dataset.set_epoch(self.absolute_epoch, skip_samples=skip)
        return torch.utils.data.DataLoader(self.dataset, batch_size=self.micro_bsz, shuffle=False,
                                           num_workers=self.num_workers, drop_last=True,
                                           pin_memory=self.num_workers > 0,
                                           worker_init_fn=ignore_sigterm_in_worker if self.num_workers else None)

    # ---- training -----------------------------------------------------------------------------------------------
    def on_train_batch_start(self, batch, batch_idx):
        self.current_lr = self.schedule.apply(self.trainer.optimizers[0], self.optimizer_step_count)

    def training_step(self, batch, batch_idx):
        ids, targets, mask = batch["input_ids"], batch["targets"], batch["loss_mask"]
        state = initial_state_for(self.model, ids.shape[0])  # state tuning's trained state; None: zeros
        if self.chunk_ctx:
            wrapped = chunked_loss(self.model, ids, targets, mask, self.chunk_ctx, initial_state=state)
            loss = wrapped.detach()
        else:
            logits = self.model(ids, state=state)
            loss = masked_cross_entropy(logits, targets, mask)
            wrapped = L2Wrap.apply(loss, logits)
        self.check_finite(loss, batch_idx)
        self.step_losses.append(loss.detach().float())
        return wrapped

    def check_finite(self, loss: torch.Tensor, batch_idx: int) -> None:
        """Stop every rank together (no rank left waiting in a collective) when any rank's loss is not finite."""
        bad = torch.tensor(0.0 if torch.isfinite(loss.detach()).item() else 1.0, device=loss.device)
        if self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce(bad, reduce_op="sum")
        if bad.item() > 0:
            raise NonFiniteLossError(
                f"loss became {loss.item()} at optimizer step {self.optimizer_step_count + 1} (epoch "
                f"{self.absolute_epoch}, micro-batch {self.batches_before(batch_idx)} of the epoch); training "
                f"stopped before this step was applied"
            )

    def pop_step_loss(self) -> Optional[float]:
        """Mean loss of the micro-batches since the last call, averaged over ranks (None if there were none)."""
        if not self.step_losses:
            return None
        loss = torch.stack(self.step_losses).mean()
        self.step_losses = []
        if self.trainer.world_size > 1:
            loss = self.trainer.strategy.reduce(loss, reduce_op="mean")
        return float(loss)

    def configure_optimizers(self):
        return build_optimizer(self.model.named_parameters(), self.optimizer_spec)
