// Host-emulation shim for <c10/cuda/CUDAGuard.h> (test-only): there is one emulated device, so the guard has
// nothing to switch. It takes whatever device-like value the real guard takes.
#pragma once
#include "../../cuda_host_emulation.h"

namespace c10 {
namespace cuda {

class CUDAGuard {
   public:
    template <typename Device>
    explicit CUDAGuard(const Device&) {}
    CUDAGuard(const CUDAGuard&) = delete;
    CUDAGuard& operator=(const CUDAGuard&) = delete;
};

}  // namespace cuda
}  // namespace c10
