// Host-emulation shim for <cuda_runtime.h> (test-only; see cuda_host_emulation.h).
#pragma once
#include "cuda_host_emulation.h"
