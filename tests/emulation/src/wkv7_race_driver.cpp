// Driver of the WKV7 shared-memory race check (test-only): runs the forward and the backward kernel of a
// race-check build of cuda/wkv7_cuda.cu (tests/emulation/build.py `build_host_program(..., race_check=True)`,
// no torch) and reports what the instrumented shared arrays saw.
//
//   wkv7_race_check B T H seed                   random inputs (w ~ U(-6, 6), everything else ~ N(0, 0.5^2))
//   wkv7_race_check B T H seed IN.bin OUT.bin    inputs read from IN.bin, every result written to OUT.bin
// IN.bin: float32, in order r, w, k, v, a, b, gy ([B, T, H, N] each), s0, gs_out ([B, H, N, N] each); the values
// are rounded to the build's element type. OUT.bin: float32, in order y, gr, gw, gk, gv, ga, gb ([B, T, H, N]),
// s_out, gs0 ([B, H, N, N]). (tests/test_wkv7_emulation.py uses the file mode to check head size 64 without a
// torch-extension build.)
// Exit status: 0 no race, 3 races (listed on stdout), 2 a launch or file failure, 1 bad arguments.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#ifdef WKV7_FP32
typedef float wkv7_elem_t;
static wkv7_elem_t to_elem(float x) { return x; }
static float from_elem(wkv7_elem_t x) { return x; }
#else
typedef __nv_bfloat16 wkv7_elem_t;
static wkv7_elem_t to_elem(float x) { return __float2bfloat16_rn(x); }
static float from_elem(wkv7_elem_t x) { return __bfloat162float(x); }
#endif

int wkv7_chunk_len();
cudaError_t wkv7_cuda_forward(int B, int T, int H,
                              const wkv7_elem_t* r, const wkv7_elem_t* w, const wkv7_elem_t* k,
                              const wkv7_elem_t* v, const wkv7_elem_t* a, const wkv7_elem_t* b,
                              const float* s0, wkv7_elem_t* y, float* s_out, float* checkpoints, cudaStream_t stream);
cudaError_t wkv7_cuda_backward(int B, int T, int H,
                               const wkv7_elem_t* r, const wkv7_elem_t* w, const wkv7_elem_t* k,
                               const wkv7_elem_t* v, const wkv7_elem_t* a, const wkv7_elem_t* b,
                               const float* checkpoints, const wkv7_elem_t* gy, const float* gs_out,
                               wkv7_elem_t* gr, wkv7_elem_t* gw, wkv7_elem_t* gk, wkv7_elem_t* gv,
                               wkv7_elem_t* ga, wkv7_elem_t* gb, float* gs0,
                               float* scratch_states, float* scratch_u, cudaStream_t stream);

extern "C" long long cuda_emu_race_count();
extern "C" void cuda_emu_print_races();

int main(int argc, char** argv) {
    if (argc != 5 && argc != 7) {
        std::fprintf(stderr, "usage: %s B T H seed [IN.bin OUT.bin]\n", argv[0]);
        return 1;
    }
    const int B = std::atoi(argv[1]), T = std::atoi(argv[2]), H = std::atoi(argv[3]);
    const unsigned seed = static_cast<unsigned>(std::atoi(argv[4]));
    if (B < 1 || T < 1 || H < 1) {
        std::fprintf(stderr, "B, T and H must be >= 1\n");
        return 1;
    }
    const int N = _N_, K = wkv7_chunk_len();
    const std::size_t seq = std::size_t(B) * T * H * N, states = std::size_t(B) * H * N * N;
    const std::size_t chunks = (std::size_t(T) + K - 1) / K;

    // Inputs as floats: 7 sequences, then 2 state-shaped tensors.
    std::vector<float> in(7 * seq + 2 * states);
    if (argc == 7) {
        std::FILE* file = std::fopen(argv[5], "rb");
        if (!file || std::fread(in.data(), sizeof(float), in.size(), file) != in.size()) {
            std::printf("cannot read %zu floats from %s\n", in.size(), argv[5]);
            return 2;
        }
        std::fclose(file);
    } else {
        std::mt19937 random(seed);
        std::normal_distribution<float> normal(0.f, 0.5f);
        std::uniform_real_distribution<float> decay(-6.f, 6.f);
        for (std::size_t x = 0; x < in.size(); ++x) in[x] = (x >= seq && x < 2 * seq) ? decay(random) : normal(random);
    }
    std::vector<std::vector<wkv7_elem_t>> seqs(7, std::vector<wkv7_elem_t>(seq));
    for (int q = 0; q < 7; ++q)
        for (std::size_t x = 0; x < seq; ++x) seqs[q][x] = to_elem(in[q * seq + x]);
    const float* s0 = in.data() + 7 * seq;
    const float* gs = s0 + states;
    const auto &r = seqs[0], &w = seqs[1], &k = seqs[2], &v = seqs[3], &a = seqs[4], &b = seqs[5], &gy = seqs[6];

    std::vector<std::vector<wkv7_elem_t>> outs(7, std::vector<wkv7_elem_t>(seq));  // y, gr, gw, gk, gv, ga, gb
    std::vector<float> s_out(states), gs0(states), checkpoints(chunks * states);
    std::vector<float> scratch_states(std::size_t(B) * H * (K + 1) * N * N), scratch_u(std::size_t(B) * H * K * N);

    cudaError_t status = wkv7_cuda_forward(B, T, H, r.data(), w.data(), k.data(), v.data(), a.data(), b.data(), s0,
                                           outs[0].data(), s_out.data(), checkpoints.data(), nullptr);
    if (status != cudaSuccess) {
        std::printf("forward launch failed: %s\n", cudaGetErrorString(status));
        return 2;
    }
    status = wkv7_cuda_backward(B, T, H, r.data(), w.data(), k.data(), v.data(), a.data(), b.data(),
                                checkpoints.data(), gy.data(), gs, outs[1].data(), outs[2].data(), outs[3].data(),
                                outs[4].data(), outs[5].data(), outs[6].data(), gs0.data(), scratch_states.data(),
                                scratch_u.data(), nullptr);
    if (status != cudaSuccess) {
        std::printf("backward launch failed: %s\n", cudaGetErrorString(status));
        return 2;
    }
    if (argc == 7) {
        std::vector<float> out;
        out.reserve(7 * seq + 2 * states);
        for (const auto& o : outs)
            for (const auto& e : o) out.push_back(from_elem(e));
        out.insert(out.end(), s_out.begin(), s_out.end());
        out.insert(out.end(), gs0.begin(), gs0.end());
        std::FILE* file = std::fopen(argv[6], "wb");
        if (!file || std::fwrite(out.data(), sizeof(float), out.size(), file) != out.size()) {
            std::printf("cannot write %s\n", argv[6]);
            return 2;
        }
        std::fclose(file);
    }
    const long long races = cuda_emu_race_count();
    if (races > 0) {
        cuda_emu_print_races();
        std::printf("RACES: %lld shared-memory race(s) (B=%d T=%d H=%d N=%d)\n", races, B, T, H, N);
        return 3;
    }
    std::printf("no shared-memory race in the WKV7 forward and backward kernels (B=%d T=%d H=%d N=%d K=%d)\n",
                B, T, H, N, K);
    return 0;
}
