"""Training strategies: DeepSpeed ZeRO 1/2/3 (with offload) on GPU and on CPU, DDP, and single-device.

Lightning's stock `DeepSpeedStrategy` refuses a CPU accelerator. `CPUCapableDeepSpeedStrategy` lifts that on CPU
only, so continuous integration exercises the real DeepSpeed engine (gloo backend, one or more processes):

- `setup_environment` skips the CUDA-only check (it does what DDPStrategy does: set the device, then set up
  distributed);
- `setup_distributed` skips the device-index check (CPU devices have no index), sets the world ranks and starts
  DeepSpeed's process group;
- `_setup_model_and_optimizer` passes `device_rank=local_rank` to `deepspeed.initialize` (on CPU the root device
  has no index, which DeepSpeed would otherwise trip on).

On a CUDA accelerator every method defers to Lightning's implementation unchanged.
"""
import argparse
from dataclasses import dataclass

from pytorch_lightning.strategies import DeepSpeedStrategy
from pytorch_lightning.strategies.strategy import Strategy

from src.train.args import DEEPSPEED_STRATEGIES, STRATEGY_NAMES, is_deepspeed


class CPUCapableDeepSpeedStrategy(DeepSpeedStrategy):
    """Lightning's DeepSpeedStrategy, made to run on a CPU accelerator with the gloo backend."""

    strategy_name = "deepspeed_cpu_capable"

    def _on_cpu(self) -> bool:
        return self.root_device.type == "cpu"

    def setup_environment(self) -> None:
        if not self._on_cpu():
            return super().setup_environment()
        Strategy.setup_environment(self)
        self.setup_distributed()

    def setup_distributed(self) -> None:
        if not self._on_cpu():
            return super().setup_distributed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    def _setup_model_and_optimizer(self, model, optimizer, lr_scheduler=None):
        if not self._on_cpu():
            return super()._setup_model_and_optimizer(model, optimizer, lr_scheduler)
        import deepspeed

        engine, deepspeed_optimizer, _, _ = deepspeed.initialize(
            args=argparse.Namespace(device_rank=self.local_rank),
            config=self.config,
            model=model,
            model_parameters=[p for p in model.parameters() if p.requires_grad],
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            dist_init_required=False,
        )
        return engine, deepspeed_optimizer


@dataclass
class StrategySpec:
    """What build_strategy needs to know (filled from TrainConfig)."""

    name: str
    accelerator: str  # "cpu" or "gpu"
    micro_bsz: int
    ds_bucket_mb: int = 200
    torch_optimizer_with_offload: bool = True  # a torch optimizer (not DeepSpeedCPUAdam) under ZeRO-Offload


def build_strategy(spec: StrategySpec):
    """A Lightning strategy object (or name) for `spec.name`.

    DeepSpeed gets an explicit config: micro batch size (so Lightning does not open the dataloader early),
    bucket sizes of ds_bucket_mb MB as RWKV-PEFT sets them, overlap_comm off on CPU (gloo has no streams to
    overlap with), and frozen base weights left out of its checkpoints.
    """
    if spec.name == "auto":
        return "auto"
    if spec.name == "ddp":
        return "ddp"
    if not is_deepspeed(spec.name):
        raise ValueError(f"unknown --strategy {spec.name!r}; choose one of {', '.join(STRATEGY_NAMES)}")
    bucket = int(spec.ds_bucket_mb * 1_000_000)
    on_cpu = spec.accelerator == "cpu"
    strategy = CPUCapableDeepSpeedStrategy(
        **DEEPSPEED_STRATEGIES[spec.name],
        allgather_bucket_size=bucket,
        reduce_bucket_size=bucket,
        overlap_comm=not on_cpu,
        contiguous_gradients=True,
        logging_batch_size_per_gpu=spec.micro_bsz,
        exclude_frozen_parameters=True,
        process_group_backend="gloo" if on_cpu else None,
    )
    if spec.torch_optimizer_with_offload:
        strategy.config["zero_force_ds_cpu_optimizer"] = False
    strategy.config["steps_per_print"] = 1 << 30  # DeepSpeed's own periodic log lines would duplicate ours
    return strategy

