"""Names of the weight dtypes the command-line tools accept (--dtype, --precision)."""
import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
