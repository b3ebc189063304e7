// Host emulation of the small part of CUDA that cuda/wkv6_cuda.cu and cuda/wkv6_op.cpp use, so that those files,
// unchanged, compile as host C++ (g++ -std=c++17 -pthread) and run on the CPU in CI. Test-only code: nothing in
// src/ or cuda/ includes it; tests/emulation/build.py puts this folder first on the include path, where the shim
// headers cuda_runtime.h, cuda_bf16.h, c10/cuda/CUDAStream.h and c10/cuda/CUDAGuard.h resolve the sources' own
// #includes to this file.
//
// What it provides:
//   - __global__, __device__, __host__, __launch_bounds__(...) removed, __forceinline__ -> inline, and
//     __shared__ -> static (valid for the kernels here: their shared arrays have fixed sizes, and the launcher runs
//     the blocks of a grid one at a time, so one static copy per kernel instantiation serves the running block).
//   - threadIdx, blockIdx, blockDim, gridDim: per-thread dim3 values (C++17 inline thread_local).
//   - __syncthreads(): a barrier over the threads of the running block (mutex + condition variable with a
//     generation counter; threads block, they do not spin). Deadlock guard: a thread that leaves the kernel counts
//     as exited, and a barrier that the remaining threads can never complete (the rest have exited) is an error,
//     as is a wait longer than the timeout (default 120 s; CUDA_EMU_BARRIER_TIMEOUT_S or
//     cuda_emu_set_barrier_timeout). On error every thread of the block leaves the kernel at its next barrier and
//     the launch fails (cudaGetLastError() == cudaErrorLaunchFailure, cudaGetErrorString says why).
//   - Kernel launches: build.py rewrites `kernel<<<grid, block, shmem, stream>>>(args...)` in a copy of the source
//     into `::cuda_emu::launch(kernel, grid, block, shmem, stream)(args...)`, which runs each block of the grid with
//     blockDim REAL std::threads, joined before the next block starts. The block order is a run-time choice
//     (cuda_emu_set_block_order, or CUDA_EMU_BLOCK_ORDER=forward|reverse|shuffle[:seed]), so tests can show that
//     results do not depend on it.
//   - __expf and friends as their float <cmath> versions; __nv_bfloat16 (2-byte storage, the layout of torch's
//     bfloat16) with round-to-nearest-even __float2bfloat16_rn and exact __bfloat162float.
//   - cudaError_t and friends, cudaStream_t, c10::cuda::getCurrentCUDAStream() and c10::cuda::CUDAGuard.
//   - With -DCUDA_EMU_RACE_CHECK: cuda_emu::SharedArray, the instrumented array that build.py substitutes for
//     each `__shared__ T name[size];` in the race-check build. Every element access is recorded with the thread
//     and the thread's barrier interval; two different threads touching one element in one interval, at least one
//     of them writing, is reported as a shared-memory race (see cuda_emu_race_count / cuda_emu_print_races).
//
// The non-template parts live in tests/emulation/src/cuda_host_emulation.cpp, linked into every emulated build.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <utility>

#ifdef CUDA_EMU_RACE_CHECK
#include <mutex>
#endif

#define CUDA_HOST_EMULATION 1

// ---------------------------------------------------------------- qualifiers
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

// ---------------------------------------------------------------- thread coordinates
struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline thread_local dim3 threadIdx{0, 0, 0};
inline thread_local dim3 blockIdx{0, 0, 0};
inline thread_local dim3 blockDim{1, 1, 1};
inline thread_local dim3 gridDim{1, 1, 1};
constexpr int warpSize = 32;

// ---------------------------------------------------------------- runtime API
enum cudaError {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorLaunchTimeout = 702,
    cudaErrorLaunchFailure = 719,
};
typedef enum cudaError cudaError_t;

struct CUstream_st;
typedef CUstream_st* cudaStream_t;

cudaError_t cudaGetLastError();                // returns and clears the last launch error
cudaError_t cudaPeekAtLastError();             // returns it without clearing
const char* cudaGetErrorString(cudaError_t);   // for a failed launch: what the emulation saw
cudaError_t cudaDeviceSynchronize();           // launches are synchronous; returns the pending error

namespace cuda_emu {

// Barrier of the running block, for the calling kernel thread (throws cuda_emu::BlockAborted when the block failed).
void sync_block();

// The calling kernel thread's barrier interval: (block serial << 32) | barriers passed. Never 0 in a kernel thread.
std::uint64_t barrier_interval();
// The calling kernel thread's linear index in its block (threadIdx.x + blockDim.x * (threadIdx.y + ...)).
int linear_thread_index();

// Runs body() once on each of block.x*block.y*block.z threads, for each block of the grid, block after block.
struct KernelBody {
    void (*call)(const void* context);
    const void* context;
};
void run_grid(dim3 grid, dim3 block, std::size_t shared_bytes, cudaStream_t stream, KernelBody body);

template <typename... Params>
struct KernelLaunch {
    void (*kernel)(Params...);
    dim3 grid, block;
    std::size_t shared_bytes;
    cudaStream_t stream;

    template <typename... Args>
    void operator()(Args&&... args) const {
        static_assert(sizeof...(Args) == sizeof...(Params), "kernel launch: wrong number of arguments");
        // Like a CUDA launch, the arguments are converted to the parameter types once, on the host; each thread
        // then receives its own copies.
        struct Context {
            void (*kernel)(Params...);
            std::tuple<std::decay_t<Params>...> params;
        } context{kernel, std::tuple<std::decay_t<Params>...>(std::forward<Args>(args)...)};
        KernelBody body{[](const void* raw) {
                            const Context& c = *static_cast<const Context*>(raw);
                            std::apply(c.kernel, c.params);
                        },
                        &context};
        run_grid(grid, block, shared_bytes, stream, body);
    }
};

template <typename... Params>
KernelLaunch<Params...> launch(void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t shared_bytes = 0,
                               cudaStream_t stream = nullptr) {
    return KernelLaunch<Params...>{kernel, grid, block, shared_bytes, stream};
}

// ---------------------------------------------------------------- device math as float host math
inline float emu_expf(float x) { return std::exp(x); }
inline float emu_exp10f(float x) { return std::pow(10.0f, x); }
inline float emu_logf(float x) { return std::log(x); }
inline float emu_log2f(float x) { return std::log2(x); }
inline float emu_log10f(float x) { return std::log10(x); }
inline float emu_powf(float x, float y) { return std::pow(x, y); }
inline float emu_sinf(float x) { return std::sin(x); }
inline float emu_cosf(float x) { return std::cos(x); }
inline float emu_tanf(float x) { return std::tan(x); }
inline float emu_fdividef(float x, float y) { return x / y; }
inline float emu_saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline float emu_rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float emu_fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }

}  // namespace cuda_emu

// glibc's <math.h> already declares __expf & co. as C functions, so the device spellings are macros (defined
// after <cmath>, which is therefore never re-entered with them).
#define __expf(x) ::cuda_emu::emu_expf(x)
#define __exp10f(x) ::cuda_emu::emu_exp10f(x)
#define __logf(x) ::cuda_emu::emu_logf(x)
#define __log2f(x) ::cuda_emu::emu_log2f(x)
#define __log10f(x) ::cuda_emu::emu_log10f(x)
#define __powf(x, y) ::cuda_emu::emu_powf(x, y)
#define __sinf(x) ::cuda_emu::emu_sinf(x)
#define __cosf(x) ::cuda_emu::emu_cosf(x)
#define __tanf(x) ::cuda_emu::emu_tanf(x)
#define __fdividef(x, y) ::cuda_emu::emu_fdividef(x, y)
#define __saturatef(x) ::cuda_emu::emu_saturatef(x)
#define __fmaf_rn(a, b, c) ::cuda_emu::emu_fmaf_rn(a, b, c)
#define rsqrtf(x) ::cuda_emu::emu_rsqrtf(x)

inline void __syncthreads() { ::cuda_emu::sync_block(); }

// ---------------------------------------------------------------- bfloat16
struct __nv_bfloat16 {
    std::uint16_t __x;  // the bits: sign, 8 exponent bits, 7 mantissa bits (the top half of a float)
};
static_assert(sizeof(__nv_bfloat16) == 2 && alignof(__nv_bfloat16) == 2, "__nv_bfloat16 must be 2 bytes");
static_assert(std::is_trivially_copyable<__nv_bfloat16>::value, "__nv_bfloat16 must be trivially copyable");

inline float __bfloat162float(__nv_bfloat16 h) {
    const std::uint32_t bits = static_cast<std::uint32_t>(h.__x) << 16;
    float f;
    __builtin_memcpy(&f, &bits, sizeof f);
    return f;
}

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    std::uint32_t bits;
    __builtin_memcpy(&bits, &f, sizeof bits);
    __nv_bfloat16 h;
    if ((bits & 0x7fffffffu) > 0x7f800000u) {  // NaN: keep the sign, return a quiet NaN
        h.__x = static_cast<std::uint16_t>((bits >> 16) | 0x0040u);
        return h;
    }
    // Round to nearest, ties to even: add 0x7fff plus the lowest kept bit, then truncate. Overflow gives inf.
    bits += 0x7fffu + ((bits >> 16) & 1u);
    h.__x = static_cast<std::uint16_t>(bits >> 16);
    return h;
}

// ---------------------------------------------------------------- shared-memory race check
#ifdef CUDA_EMU_RACE_CHECK
namespace cuda_emu {

// Record one race (see cuda_host_emulation.cpp); an out-of-bounds index is recorded and then fails the launch
// (it throws, so the thread leaves the kernel).
void report_shared_race(const char* array, std::size_t index, std::size_t size, int thread, const char* access,
                        int other_thread, const char* other_access, std::uint64_t interval);
[[noreturn]] void report_shared_out_of_bounds(const char* array, long long index, std::size_t size, int thread);

template <typename T, std::size_t N>
class SharedArray {
    struct Shadow {
        std::uint64_t write_interval = 0;  // interval of the last write (0: none yet)
        int writer = -1;
        std::uint64_t read_interval = 0;   // interval of the reads below
        int reader = -1;                   // the first thread that read in read_interval
        int other_reader = -1;             // the first other thread that read in read_interval (-1: none)
    };

    T data_[N];
    Shadow shadow_[N];
    const char* name_;
    std::mutex mutex_;

    void on_read(std::size_t i) {
        const std::uint64_t now = barrier_interval();
        const int me = linear_thread_index();
        std::lock_guard<std::mutex> lock(mutex_);
        Shadow& s = shadow_[i];
        if (s.write_interval == now && s.writer != me)
            report_shared_race(name_, i, N, me, "read", s.writer, "write", now);
        if (s.read_interval != now) {
            s.read_interval = now;
            s.reader = me;
            s.other_reader = -1;
        } else if (s.reader != me && s.other_reader < 0) {
            s.other_reader = me;
        }
    }

    void on_write(std::size_t i) {
        const std::uint64_t now = barrier_interval();
        const int me = linear_thread_index();
        std::lock_guard<std::mutex> lock(mutex_);
        Shadow& s = shadow_[i];
        if (s.write_interval == now && s.writer != me)
            report_shared_race(name_, i, N, me, "write", s.writer, "write", now);
        if (s.read_interval == now && (s.reader != me || s.other_reader >= 0))
            report_shared_race(name_, i, N, me, "write", s.reader != me ? s.reader : s.other_reader, "read", now);
        s.write_interval = now;
        s.writer = me;
    }

   public:
    explicit SharedArray(const char* name) : data_(), shadow_(), name_(name) {}
    SharedArray(const SharedArray&) = delete;
    SharedArray& operator=(const SharedArray&) = delete;

    class Element {
        SharedArray* array_;
        std::size_t i_;

       public:
        Element(SharedArray* array, std::size_t i) : array_(array), i_(i) {}
        operator T() const {
            array_->on_read(i_);
            return array_->data_[i_];
        }
        Element& operator=(const T& value) {
            array_->on_write(i_);
            array_->data_[i_] = value;
            return *this;
        }
        Element& operator=(const Element& other) { return *this = static_cast<T>(other); }
        Element& operator+=(const T& value) { return *this = static_cast<T>(*this) + value; }
        Element& operator-=(const T& value) { return *this = static_cast<T>(*this) - value; }
        Element& operator*=(const T& value) { return *this = static_cast<T>(*this) * value; }
    };

    template <typename I>
    Element operator[](I index) {
        const long long i = static_cast<long long>(index);
        if (i < 0 || i >= static_cast<long long>(N)) report_shared_out_of_bounds(name_, i, N, linear_thread_index());
        return Element(this, static_cast<std::size_t>(i));
    }
};

}  // namespace cuda_emu
#endif  // CUDA_EMU_RACE_CHECK
