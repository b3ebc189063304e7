// Driver of the shared-memory race check (test-only): runs the WKV6 forward kernel and both backward kernels of a
// race-check build of cuda/wkv6_cuda.cu (built by tests/emulation/build.py with -DCUDA_EMU_RACE_CHECK, no torch)
// on random inputs, then reports what the instrumented shared arrays saw.
//
//   wkv6_race_check [B T H seed]
// Exit status: 0 no race, 3 races (listed on stdout), 2 a launch failed, 1 bad arguments.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#ifdef WKV6_FP32
typedef float wkv_elem_t;
static wkv_elem_t to_elem(float x) { return x; }
#else
typedef __nv_bfloat16 wkv_elem_t;
static wkv_elem_t to_elem(float x) { return __float2bfloat16_rn(x); }
#endif

cudaError_t wkv6_cuda_forward(int B, int T, int H,
                              const wkv_elem_t* r, const wkv_elem_t* k, const wkv_elem_t* v, const wkv_elem_t* w,
                              const float* u, const float* s0, wkv_elem_t* y, float* s_out, cudaStream_t stream);
cudaError_t wkv6_cuda_backward(int B, int T, int H,
                               const wkv_elem_t* r, const wkv_elem_t* k, const wkv_elem_t* v, const wkv_elem_t* w,
                               const float* u, const float* s0, const wkv_elem_t* gy, const float* gs_out,
                               wkv_elem_t* gr, wkv_elem_t* gk, wkv_elem_t* gv, wkv_elem_t* gw,
                               float* gu_part, float* gs0, float* q_scratch, cudaStream_t stream);

extern "C" long long cuda_emu_race_count();
extern "C" void cuda_emu_print_races();

int main(int argc, char** argv) {
    if (argc != 1 && argc != 5) {
        std::fprintf(stderr, "usage: %s [B T H seed]\n", argv[0]);
        return 1;
    }
    const int B = argc == 5 ? std::atoi(argv[1]) : 1;
    const int T = argc == 5 ? std::atoi(argv[2]) : 4;
    const int H = argc == 5 ? std::atoi(argv[3]) : 2;
    const unsigned seed = argc == 5 ? static_cast<unsigned>(std::atoi(argv[4])) : 0u;
    const int N = _N_;
    const std::size_t seq = std::size_t(B) * T * H * N, states = std::size_t(B) * H * N * N;

    std::mt19937 random(seed);
    std::normal_distribution<float> normal(0.f, 0.5f);
    std::uniform_real_distribution<float> decay(-5.f, 1.f);
    auto elems = [&](bool is_decay) {
        std::vector<wkv_elem_t> x(seq);
        for (auto& e : x) e = to_elem(is_decay ? decay(random) : normal(random));
        return x;
    };
    auto floats = [&](std::size_t n) {
        std::vector<float> x(n);
        for (auto& e : x) e = normal(random);
        return x;
    };
    const auto r = elems(false), k = elems(false), v = elems(false), w = elems(true), gy = elems(false);
    const auto u = floats(std::size_t(H) * N), s0 = floats(states), gs = floats(states);
    std::vector<wkv_elem_t> y(seq), gr(seq), gk(seq), gv(seq), gw(seq);
    std::vector<float> s_out(states), gs0(states), gu(std::size_t(B) * H * N), q(seq);

    cudaError_t status = wkv6_cuda_forward(B, T, H, r.data(), k.data(), v.data(), w.data(), u.data(), s0.data(),
                                           y.data(), s_out.data(), nullptr);
    if (status != cudaSuccess) {
        std::printf("forward launch failed: %s\n", cudaGetErrorString(status));
        return 2;
    }
    status = wkv6_cuda_backward(B, T, H, r.data(), k.data(), v.data(), w.data(), u.data(), s0.data(), gy.data(),
                                gs.data(), gr.data(), gk.data(), gv.data(), gw.data(), gu.data(), gs0.data(),
                                q.data(), nullptr);
    if (status != cudaSuccess) {
        std::printf("backward launch failed: %s\n", cudaGetErrorString(status));
        return 2;
    }
    const long long races = cuda_emu_race_count();
    if (races > 0) {
        cuda_emu_print_races();
        std::printf("RACES: %lld shared-memory race(s) (B=%d T=%d H=%d N=%d)\n", races, B, T, H, N);
        return 3;
    }
    std::printf("no shared-memory race in the forward, backward rows and backward adjoint kernels "
                "(B=%d T=%d H=%d N=%d)\n", B, T, H, N);
    return 0;
}
