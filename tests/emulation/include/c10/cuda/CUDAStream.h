// Host-emulation shim for <c10/cuda/CUDAStream.h> (test-only): the current stream is the emulation's only one.
#pragma once
#include "../../cuda_host_emulation.h"

namespace c10 {
namespace cuda {

class CUDAStream {
   public:
    cudaStream_t stream() const { return nullptr; }
    operator cudaStream_t() const { return stream(); }
};

inline CUDAStream getCurrentCUDAStream(signed char /*device_index*/ = -1) { return CUDAStream(); }

}  // namespace cuda
}  // namespace c10
