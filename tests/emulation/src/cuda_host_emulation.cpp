// The non-template part of the CUDA host emulation (see include/cuda_host_emulation.h): the block barrier with its
// deadlock guard, the grid launcher, the last-error state, the block order and the race report. Linked into every
// emulated build; test-only code.
//
// C interface (reached from Python through ctypes on the built .so, or from a driver program):
//   void cuda_emu_set_block_order(int order, unsigned long long seed)  order 0: in order, 1: reversed, 2: shuffled
//   int  cuda_emu_block_order(void)                                    the current order (0, 1, 2)
//   void cuda_emu_set_barrier_timeout(double seconds)
//   long long cuda_emu_race_count(void); void cuda_emu_reset_races(void); void cuda_emu_print_races(void)
//   long long cuda_emu_blocks_run(void)                                blocks run so far by this build
//   long long cuda_emu_last_launch_order(long long* out, long long n)  the last launch's block order
// Environment defaults, read at the first launch: CUDA_EMU_BLOCK_ORDER = forward | reverse | shuffle[:seed],
// CUDA_EMU_BARRIER_TIMEOUT_S = seconds.

#include "cuda_host_emulation.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#define CUDA_EMU_API extern "C" __attribute__((visibility("default")))

namespace cuda_emu {
namespace {

// Thrown out of __syncthreads() in every thread of a block whose barrier failed; caught by the launcher.
struct BlockAborted {};

class BlockBarrier {
   public:
    BlockBarrier(int size, double timeout_s) : size_(size), timeout_s_(timeout_s) {}

    // One thread arrives; returns once all threads of the block have arrived, throws BlockAborted on failure.
    void arrive_and_wait(int thread) {
        std::unique_lock<std::mutex> lock(mutex_);
        if (failed_) throw BlockAborted{};
        waiting_.push_back(thread);
        if (static_cast<int>(waiting_.size()) + exited_ == size_) {
            if (exited_ > 0) {
                fail_locked("deadlock: __syncthreads() reached by " + describe_waiting() + " while the other " +
                            std::to_string(exited_) + " had already left the kernel, so it can never complete "
                            "(a barrier in code that not every thread of the block runs)");
                throw BlockAborted{};
            }
            waiting_.clear();
            ++generation_;
            cv_.notify_all();
            return;
        }
        const std::uint64_t generation = generation_;
        const auto deadline = std::chrono::steady_clock::now() +
                              std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                  std::chrono::duration<double>(timeout_s_));
        while (generation_ == generation && !failed_) {
            if (cv_.wait_until(lock, deadline) == std::cv_status::timeout && generation_ == generation && !failed_) {
                std::ostringstream message;
                message << "barrier timeout: " << describe_waiting() << " waited " << timeout_s_
                        << " s at __syncthreads() for the other " << (size_ - exited_ - waiting_.size())
                        << " (" << exited_ << " had left the kernel)";
                fail_locked(message.str());
            }
        }
        if (generation_ != generation) return;
        throw BlockAborted{};
    }

    // A thread leaves the kernel (returned or threw).
    void exit_thread() {
        std::lock_guard<std::mutex> lock(mutex_);
        ++exited_;
        if (!failed_ && !waiting_.empty() && static_cast<int>(waiting_.size()) + exited_ == size_) {
            fail_locked("deadlock: __syncthreads() reached by " + describe_waiting() + " while the other " +
                        std::to_string(exited_) + " left the kernel, so it can never complete (a barrier in code "
                        "that not every thread of the block runs)");
        }
    }

    // A thread failed outside a barrier (an exception in kernel code): the block is aborted.
    void fail(const std::string& message) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!failed_) fail_locked(message);
    }

    bool failed() {
        std::lock_guard<std::mutex> lock(mutex_);
        return failed_;
    }

    std::string error() {
        std::lock_guard<std::mutex> lock(mutex_);
        return error_;
    }

    std::uint64_t generation_unlocked() const { return generation_; }

   private:
    void fail_locked(const std::string& message) {
        failed_ = true;
        error_ = message;
        cv_.notify_all();
    }

    std::string describe_waiting() const {
        std::ostringstream text;
        text << waiting_.size() << " of the block's " << size_ << " threads (thread";
        if (waiting_.size() != 1) text << "s";
        std::vector<int> sorted(waiting_);
        std::sort(sorted.begin(), sorted.end());
        for (std::size_t n = 0; n < sorted.size() && n < 8; ++n) text << (n ? ", " : " ") << sorted[n];
        if (sorted.size() > 8) text << ", ...";
        text << ")";
        return text.str();
    }

    std::mutex mutex_;
    std::condition_variable cv_;
    const int size_;
    const double timeout_s_;
    std::vector<int> waiting_;  // threads waiting in the current generation
    int exited_ = 0;
    std::uint64_t generation_ = 0;
    bool failed_ = false;
    std::string error_;
};

struct ThreadState {
    BlockBarrier* barrier = nullptr;
    std::uint64_t block_serial = 0;
    std::uint64_t barriers_passed = 0;
    int linear = -1;
};
thread_local ThreadState tls;

std::mutex config_mutex;
bool config_read = false;
int block_order = 0;
unsigned long long block_seed = 0;
double barrier_timeout_s = 120.0;
std::atomic<std::uint64_t> block_serial_counter{0};
std::vector<std::uint64_t> last_launch_order;  // linear block indices of the last launch, in the order run

// The host thread's last error (like CUDA's per-thread error state) and the message of the last failure.
thread_local cudaError_t last_error = cudaSuccess;
thread_local std::string last_failure;

void read_environment_locked() {
    if (config_read) return;
    config_read = true;
    if (const char* order = std::getenv("CUDA_EMU_BLOCK_ORDER")) {
        const std::string text(order);
        if (text == "reverse" || text == "reversed") {
            block_order = 1;
        } else if (text.rfind("shuffle", 0) == 0) {
            block_order = 2;
            const auto colon = text.find(':');
            block_seed = colon == std::string::npos ? 0 : std::strtoull(text.c_str() + colon + 1, nullptr, 10);
        } else {
            block_order = 0;
        }
    }
    if (const char* timeout = std::getenv("CUDA_EMU_BARRIER_TIMEOUT_S")) {
        const double seconds = std::atof(timeout);
        if (seconds > 0) barrier_timeout_s = seconds;
    }
}

std::vector<std::uint64_t> order_of_blocks(std::uint64_t count, int order, unsigned long long seed) {
    std::vector<std::uint64_t> blocks(count);
    for (std::uint64_t b = 0; b < count; ++b) blocks[b] = b;
    if (order == 1) {
        for (std::uint64_t b = 0; b < count; ++b) blocks[b] = count - 1 - b;
    } else if (order == 2) {
        std::mt19937_64 random(seed);  // Fisher-Yates with the standard engine: the same order everywhere
        for (std::uint64_t b = count; b > 1; --b) {
            const std::uint64_t other = random() % b;
            std::swap(blocks[b - 1], blocks[other]);
        }
    }
    return blocks;
}

void set_error(cudaError_t error, const std::string& message) {
    last_error = error;
    last_failure = message;
}

// ---------------------------------------------------------------- race report
std::mutex race_mutex;
long long race_count = 0;
std::vector<std::string> race_messages;  // the first few, for the report
constexpr std::size_t kKeptRaceMessages = 20;

}  // namespace

void sync_block() {
    ThreadState& state = tls;
    if (state.barrier == nullptr) throw std::logic_error("__syncthreads() called outside a kernel launch");
    state.barrier->arrive_and_wait(state.linear);
    ++state.barriers_passed;
}

std::uint64_t barrier_interval() { return (tls.block_serial << 32) | (tls.barriers_passed & 0xffffffffu); }

int linear_thread_index() { return tls.linear; }

void run_grid(dim3 grid, dim3 block, std::size_t shared_bytes, cudaStream_t /*stream*/, KernelBody body) {
    int order;
    unsigned long long seed;
    double timeout_s;
    {
        std::lock_guard<std::mutex> lock(config_mutex);
        read_environment_locked();
        order = block_order;
        seed = block_seed;
        timeout_s = barrier_timeout_s;
    }
    const std::uint64_t threads_per_block = std::uint64_t(block.x) * block.y * block.z;
    const std::uint64_t blocks = std::uint64_t(grid.x) * grid.y * grid.z;
    if (threads_per_block < 1 || threads_per_block > 1024 || blocks < 1 || shared_bytes > 0) {
        std::ostringstream message;
        message << "invalid launch configuration: grid (" << grid.x << ", " << grid.y << ", " << grid.z
                << "), block (" << block.x << ", " << block.y << ", " << block.z << "), dynamic shared memory "
                << shared_bytes << " bytes (the emulation supports none)";
        set_error(cudaErrorInvalidConfiguration, message.str());
        return;
    }
    const int n = static_cast<int>(threads_per_block);
    const std::vector<std::uint64_t> schedule = order_of_blocks(blocks, order, seed);
    {
        std::lock_guard<std::mutex> lock(config_mutex);
        last_launch_order = schedule;
    }
    for (const std::uint64_t linear_block : schedule) {
        const dim3 block_index(static_cast<unsigned>(linear_block % grid.x),
                               static_cast<unsigned>((linear_block / grid.x) % grid.y),
                               static_cast<unsigned>(linear_block / (std::uint64_t(grid.x) * grid.y)));
        const std::uint64_t serial = ++block_serial_counter;
        BlockBarrier barrier(n, timeout_s);
        std::vector<std::thread> threads;
        threads.reserve(n);
        for (int t = 0; t < n; ++t) {
            threads.emplace_back([&, t] {
                threadIdx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
                blockIdx = block_index;
                blockDim = block;
                gridDim = grid;
                tls.barrier = &barrier;
                tls.block_serial = serial;
                tls.barriers_passed = 0;
                tls.linear = t;
                try {
                    body.call(body.context);
                } catch (const BlockAborted&) {
                    // the barrier already holds the reason
                } catch (const std::exception& error) {
                    barrier.fail(std::string("thread ") + std::to_string(t) + " threw: " + error.what());
                } catch (...) {
                    barrier.fail("thread " + std::to_string(t) + " threw a non-standard exception");
                }
                barrier.exit_thread();
                tls = ThreadState();
            });
        }
        for (auto& thread : threads) thread.join();
        if (barrier.failed()) {
            std::ostringstream message;
            message << "host emulation: block (" << block_index.x << ", " << block_index.y << ", "
                    << block_index.z << ") of a grid of " << blocks << " failed: " << barrier.error();
            set_error(cudaErrorLaunchFailure, message.str());
            return;
        }
    }
}

void report_shared_race(const char* array, std::size_t index, std::size_t size, int thread, const char* access,
                        int other_thread, const char* other_access, std::uint64_t interval) {
    std::lock_guard<std::mutex> lock(race_mutex);
    ++race_count;
    if (race_messages.size() < kKeptRaceMessages) {
        std::ostringstream message;
        message << "shared-memory race on " << array << "[" << index << "] (of " << size << "): thread " << thread
                << " " << access << " and thread " << other_thread << " " << other_access
                << " with no __syncthreads() between them (block serial " << (interval >> 32)
                << ", after barrier " << (interval & 0xffffffffu) << ")";
        race_messages.push_back(message.str());
    }
}

void report_shared_out_of_bounds(const char* array, long long index, std::size_t size, int thread) {
    std::ostringstream message;
    message << "shared-memory index out of bounds: " << array << "[" << index << "] (size " << size
            << ") in thread " << thread;
    {
        std::lock_guard<std::mutex> lock(race_mutex);
        ++race_count;
        if (race_messages.size() < kKeptRaceMessages) race_messages.push_back(message.str());
    }
    throw std::out_of_range(message.str());
}

}  // namespace cuda_emu

cudaError_t cudaGetLastError() {
    const cudaError_t error = cuda_emu::last_error;
    cuda_emu::last_error = cudaSuccess;
    return error;
}

cudaError_t cudaPeekAtLastError() { return cuda_emu::last_error; }

cudaError_t cudaDeviceSynchronize() { return cuda_emu::last_error; }

const char* cudaGetErrorString(cudaError_t error) {
    switch (error) {
        case cudaSuccess:
            return "no error";
        case cudaErrorInvalidValue:
            return "invalid argument";
        case cudaErrorInvalidConfiguration:
        case cudaErrorLaunchFailure:
        case cudaErrorLaunchTimeout:
            return cuda_emu::last_failure.empty() ? "unspecified launch failure" : cuda_emu::last_failure.c_str();
    }
    return "unknown error";
}

CUDA_EMU_API void cuda_emu_set_block_order(int order, unsigned long long seed) {
    std::lock_guard<std::mutex> lock(cuda_emu::config_mutex);
    cuda_emu::read_environment_locked();
    cuda_emu::block_order = (order == 1 || order == 2) ? order : 0;
    cuda_emu::block_seed = seed;
}

CUDA_EMU_API int cuda_emu_block_order() {
    std::lock_guard<std::mutex> lock(cuda_emu::config_mutex);
    cuda_emu::read_environment_locked();
    return cuda_emu::block_order;
}

CUDA_EMU_API void cuda_emu_set_barrier_timeout(double seconds) {
    std::lock_guard<std::mutex> lock(cuda_emu::config_mutex);
    cuda_emu::read_environment_locked();
    if (seconds > 0) cuda_emu::barrier_timeout_s = seconds;
}

// Copies up to `capacity` linear block indices of the last launch, in the order they ran; returns how many it had.
CUDA_EMU_API long long cuda_emu_last_launch_order(long long* out, long long capacity) {
    std::lock_guard<std::mutex> lock(cuda_emu::config_mutex);
    const long long count = static_cast<long long>(cuda_emu::last_launch_order.size());
    for (long long b = 0; b < count && b < capacity; ++b) out[b] = static_cast<long long>(cuda_emu::last_launch_order[b]);
    return count;
}

CUDA_EMU_API long long cuda_emu_blocks_run() { return static_cast<long long>(cuda_emu::block_serial_counter.load()); }

CUDA_EMU_API long long cuda_emu_race_count() {
    std::lock_guard<std::mutex> lock(cuda_emu::race_mutex);
    return cuda_emu::race_count;
}

CUDA_EMU_API void cuda_emu_reset_races() {
    std::lock_guard<std::mutex> lock(cuda_emu::race_mutex);
    cuda_emu::race_count = 0;
    cuda_emu::race_messages.clear();
}

CUDA_EMU_API void cuda_emu_print_races() {
    std::lock_guard<std::mutex> lock(cuda_emu::race_mutex);
    for (const auto& message : cuda_emu::race_messages) std::printf("%s\n", message.c_str());
    if (cuda_emu::race_count > static_cast<long long>(cuda_emu::race_messages.size()))
        std::printf("... and %lld more\n", cuda_emu::race_count - static_cast<long long>(cuda_emu::race_messages.size()));
    std::fflush(stdout);
}
