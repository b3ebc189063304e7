// Host-emulation shim for <cuda_bf16.h>: __nv_bfloat16, __float2bfloat16_rn, __bfloat162float (test-only).
#pragma once
#include "cuda_host_emulation.h"
