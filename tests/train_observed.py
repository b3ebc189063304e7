"""train.py for tests, with a callback that saves the trainable tensors each rank ends with (the weights the
engine really holds, to compare with what the run wrote): `python -m tests.train_observed <train.py flags>`.

Writes PROJ_DIR/rank{R}-trainable.pt on every rank at the end of training (and rank{R}-trainable-start.pt before
the first step with TEST_SAVE_START=1). With TEST_SIGTERM_AT=EPOCH:BATCH in
the environment, the process also sends itself SIGTERM after micro-batch BATCH (0-based, of this process's first
Lightning epoch counted from EPOCH) of epoch EPOCH: a signal at an exactly chosen point. Only tests start it.
"""
import os
import signal
import sys
from pathlib import Path

import torch
from pytorch_lightning.callbacks import Callback

from src.train.launch import plan_from_argv, run_plan


class SaveRankTrainables(Callback):
    def __init__(self, proj_dir, at_start=False):
        self.proj_dir = Path(proj_dir)
        self.at_start = at_start

    def save(self, trainer, pl_module, suffix):
        tensors = {n: p.detach().float().cpu().clone() for n, p in pl_module.model.named_parameters()
                   if p.requires_grad}
        torch.save(tensors, self.proj_dir / f"rank{trainer.global_rank}-trainable{suffix}.pt")

    def on_train_start(self, trainer, pl_module):
        if self.at_start:
            self.save(trainer, pl_module, "-start")

    def on_train_end(self, trainer, pl_module):
        self.save(trainer, pl_module, "")


class SigtermAt(Callback):
    def __init__(self, epoch: int, batch: int):
        self.epoch, self.batch = epoch, batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if pl_module.absolute_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGTERM)


def main(argv=None) -> int:
    cfg, plan, status = plan_from_argv(argv)
    if plan is None:
        return status
    callbacks = [SaveRankTrainables(cfg.proj_dir, at_start=os.environ.get("TEST_SAVE_START") == "1")]
    if os.environ.get("TEST_SIGTERM_AT"):
        epoch, batch = (int(x) for x in os.environ["TEST_SIGTERM_AT"].split(":"))
        callbacks.append(SigtermAt(epoch, batch))
    return run_plan(plan, extra_callbacks=callbacks)


if __name__ == "__main__":
    sys.exit(main())
