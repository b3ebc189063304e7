// WKV7 (RWKV-7 "x070") forward and backward CUDA kernels (our own). Self-contained: no torch headers, so it
// compiles alone with
//   nvcc -c -arch=sm_80 -O3 --use_fast_math -D_N_=64 -D_T_=4096 [-DWKV7_FP32] -o wkv7_cuda.o cuda/wkv7_cuda.cu
// The torch binding is cuda/wkv7_op.cpp.
//
// Recurrence, per batch element b and head h; value index i, key index j; state S [N(value i), N(key j)]:
//   lambda_t[j] = -exp(-1/2) sigmoid(w_t[j])       (log decay; w is the RAW decay, the soft clamp is built in:
//   d_t[j]      = exp(lambda_t[j])                   exp(-exp(-softplus(-w) - 1/2)) = this, d in (0.545, 1))
//   u_t[i]      = sum_j S_{t-1}[i][j] a_t[j]       (the "sa" term, read from the OLD state)
//   S_t[i][j]   = S_{t-1}[i][j] d_t[j] + u_t[i] b_t[j] + v_t[i] k_t[j]
//   y_t[i]      = sum_j S_t[i][j] r_t[j]           (the UPDATED state: token t included)
// S_{-1} = s0 (given), S_{T-1} is written to s_out. Any T >= 1: there is no T % 16 rule.
//
// Compile-time parameters:
//   _N_              head size (64 for RWKV-7). Each thread keeps one row or one column of an N x N matrix in
//                    registers.
//   _T_              the largest T this build accepts (checked on the host; nothing is sized by it).
//   WKV7_FP32        if defined, r/w/k/v/a/b/y and their gradients are float; otherwise bfloat16. All arithmetic
//                    is float; the states, the checkpoints and the state gradients are always float.
//   WKV7_CHUNK_LEN   checkpoint interval K of the backward pass (default 16; any K >= 1).
// Memory layout: r, w, k, v, a, b, y and their gradients [B, T, H, N] contiguous; s0, s_out, gs_out, gs0
//   [B, H, N(i), N(j)]; checkpoints [B, H, C, N, N] with C = ceil(T / K), checkpoint c = S_{cK-1} (c = 0: s0);
//   backward scratch (one slice per block, each read back only by the thread that wrote it):
//   states [B*H, K+1, N, N] and u [B*H, K, N].
//
// Thread layout: one block per (b, h), so B*H blocks.
//   forward     N threads; thread i owns row i of S (S[i][.] in registers), which is all that u_t[i] and y_t[i]
//               need. Per step the block stages r_t, d_t, k_t, a_t, b_t (key-indexed) in shared memory; thread i
//               stages index i of each and keeps v_t[i] in a register. Before every K-th step (t % K == 0) each
//               thread writes its row of S_{t-1} to checkpoint t/K.
//   backward    2N threads, backward in time, one chunk of K steps at a time (c = C-1 .. 0). Threads [0, N) are
//               ROW threads (row i), threads [N, 2N) are COLUMN threads (column j). Both kinds hold the adjoint
//               carry (below) in registers, the row threads row i of it, the column threads column j; the two
//               copies are updated with the same float expression, so they stay equal.
//     phase R   recompute the chunk from its checkpoint: both kinds step S forward (row threads by rows: they
//               form u_t[i], put it in shared memory and save it to the u scratch; column threads by columns,
//               with u from shared memory, and save their column of S_{cK-1} .. S_{cK+K-1} to the states
//               scratch). So every S of the chunk is recomputed exactly, with no back-stepping division by d.
//     phase B   the chunk's steps in reverse: row threads give gv and gu (row sums of the adjoint), column
//               threads give gr, gk, gb, gd (column sums) and, after one more barrier that publishes gu, ga and
//               their column of the next carry. The decay gradient gw_t[j] belongs to column thread j.
//
// Gradients. gy_t = dL/dy_t, gS = dL/dS_{T-1} (gs_out). A_t = dL/dS_t, the full adjoint of S_t:
//   A_t = gy_t r_t^T + P_t,   P_{T-1} = gS,   P_{t-1} = A_t diag(d_t) + gu_t a_t^T     (P: the "carry")
// i.e. P_{t-1}[i][j] = A_t[i][j] d_t[j] + gu_t[i] a_t[j], because S_t depends on S_{t-1} through the decay and
// through u_t = S_{t-1} a_t. Then, per step t:
//   gr_t[j] = sum_i S_t[i][j] gy_t[i]                  (y_t = S_t r_t)
//   gv_t[i] = sum_j A_t[i][j] k_t[j]                   (S_t += v_t k_t^T)
//   gk_t[j] = sum_i A_t[i][j] v_t[i]
//   gu_t[i] = sum_j A_t[i][j] b_t[j]                   (S_t += u_t b_t^T; the gradient of u_t)
//   gb_t[j] = sum_i A_t[i][j] u_t[i]
//   ga_t[j] = sum_i S_{t-1}[i][j] gu_t[i]              (u_t = S_{t-1} a_t)
//   gd_t[j] = sum_i A_t[i][j] S_{t-1}[i][j]            (S_t += S_{t-1} diag(d_t))
//   gw_t[j] = gd_t[j] d_t[j] lambda_t[j] (1 - sigmoid(w_t[j]))    (dd/dw = d dlambda/dw, dlambda/dw = lambda (1-s))
//   gs0     = P_{-1} = A_0 diag(d_0) + gu_0 a_0^T
// sigmoid(w) and 1 - sigmoid(w) = sigmoid(-w) are formed separately as 1 / (1 + exp(-+w)), so neither
// saturates into a cancellation or into inf * 0. Every term is a plain dot product of exact recomputed states
// and adjoints: nothing is divided by a decay and nothing is differenced.

#include <cuda_runtime.h>
#include <cuda_bf16.h>

#ifndef _N_
#error "define the head size: -D_N_=64"
#endif
#ifndef _T_
#error "define the largest sequence length this build accepts: -D_T_=4096"
#endif
#ifndef WKV7_CHUNK_LEN
#define WKV7_CHUNK_LEN 16
#endif

static_assert(_N_ >= 1 && _N_ <= 256, "head size _N_ must be in [1, 256] (2N threads per backward block)");
static_assert(_T_ >= 1, "_T_ (the largest accepted T) must be >= 1");
static_assert(WKV7_CHUNK_LEN >= 1, "WKV7_CHUNK_LEN must be >= 1");

#ifdef WKV7_FP32
typedef float wkv7_elem_t;
#else
typedef __nv_bfloat16 wkv7_elem_t;
#endif

namespace wkv7_detail {

constexpr int kN = _N_;
constexpr int kK = WKV7_CHUNK_LEN;
// exp(-1/2): the largest |log decay| the soft clamp allows.
constexpr float kDecayScale = 0.60653065971263342f;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename F>
__device__ __forceinline__ F from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

__device__ __forceinline__ float sigmoid_of(float x) { return 1.f / (1.f + __expf(-x)); }
// Per-step decay d = exp(-exp(-1/2) sigmoid(w)) from the raw w.
__device__ __forceinline__ float decay_from_raw(float w) { return __expf(-kDecayScale * sigmoid_of(w)); }

__device__ __forceinline__ size_t seq_index(int b, int t, int h, int T, int H) {
    return (((size_t)b * T + t) * H + h) * kN;
}

template <typename F>
__global__ void __launch_bounds__(kN) wkv7_forward_kernel(
    const int T, const int H,
    const F* __restrict__ r, const F* __restrict__ w, const F* __restrict__ k, const F* __restrict__ v,
    const F* __restrict__ a, const F* __restrict__ b,
    const float* __restrict__ s0, F* __restrict__ y, float* __restrict__ s_out, float* __restrict__ checkpoints)
{
    const int bh = blockIdx.x;  // = batch * H + head, also the [B, H] index of the state tensors
    const int batch = bh / H;
    const int head = bh % H;
    const int i = threadIdx.x;  // this thread's value row; it also stages key channel i
    const int n_chunks = (T + kK - 1) / kK;

    __shared__ float r_s[kN], d_s[kN], k_s[kN], a_s[kN], b_s[kN];

    float state[kN];  // state[j] = S[i][j]
    const float* s0_row = s0 + ((size_t)bh * kN + i) * kN;
#pragma unroll
    for (int j = 0; j < kN; ++j) state[j] = s0_row[j];

    for (int t = 0; t < T; ++t) {
        if (t % kK == 0) {
            float* out = checkpoints + (((size_t)bh * n_chunks + t / kK) * kN + i) * kN;
#pragma unroll
            for (int j = 0; j < kN; ++j) out[j] = state[j];
        }
        const size_t idx = seq_index(batch, t, head, T, H) + i;
        const float v_i = to_float(v[idx]);
        __syncthreads();  // everyone is done reading the previous step's shared values
        r_s[i] = to_float(r[idx]);
        d_s[i] = decay_from_raw(to_float(w[idx]));
        k_s[i] = to_float(k[idx]);
        a_s[i] = to_float(a[idx]);
        b_s[i] = to_float(b[idx]);
        __syncthreads();
        float u_i = 0.f;
#pragma unroll
        for (int j = 0; j < kN; ++j) u_i = fmaf(state[j], a_s[j], u_i);
        float y_i = 0.f;
#pragma unroll
        for (int j = 0; j < kN; ++j) {
            state[j] = fmaf(state[j], d_s[j], fmaf(u_i, b_s[j], v_i * k_s[j]));
            y_i = fmaf(state[j], r_s[j], y_i);
        }
        y[idx] = from_float<F>(y_i);
    }

    float* out = s_out + ((size_t)bh * kN + i) * kN;
#pragma unroll
    for (int j = 0; j < kN; ++j) out[j] = state[j];
}

template <typename F>
__global__ void __launch_bounds__(2 * kN) wkv7_backward_kernel(
    const int T, const int H,
    const F* __restrict__ r, const F* __restrict__ w, const F* __restrict__ k, const F* __restrict__ v,
    const F* __restrict__ a, const F* __restrict__ b,
    const float* __restrict__ checkpoints, const F* __restrict__ gy, const float* __restrict__ gs_out,
    F* __restrict__ gr, F* __restrict__ gw, F* __restrict__ gk, F* __restrict__ gv, F* __restrict__ ga,
    F* __restrict__ gb, float* __restrict__ gs0, float* __restrict__ scratch_states, float* __restrict__ scratch_u)
{
    const int bh = blockIdx.x;
    const int batch = bh / H;
    const int head = bh % H;
    const bool row_thread = threadIdx.x < kN;
    const int c = row_thread ? threadIdx.x : threadIdx.x - kN;  // row i (row threads) or column j
    const int n_chunks = (T + kK - 1) / kK;
    const size_t matrix = (size_t)kN * kN;

    // Key-indexed (j) vectors, staged by column thread j; value-indexed (i) vectors, staged by row thread i.
    __shared__ float r_s[kN], d_s[kN], k_s[kN], a_s[kN], b_s[kN];
    __shared__ float v_s[kN], gy_s[kN], u_s[kN], gu_s[kN];

    float* my_states = scratch_states + (size_t)bh * (kK + 1) * matrix;  // [K+1, N, N], written by column threads
    float* my_u = scratch_u + (size_t)bh * kK * kN;                      // [K, N], written by row threads

    // The carry P (header): row threads hold P[c][.], column threads P[.][c]. It starts as gS.
    float carry[kN];
    const float* gs_bh = gs_out + (size_t)bh * matrix;
#pragma unroll
    for (int x = 0; x < kN; ++x) carry[x] = row_thread ? gs_bh[(size_t)c * kN + x] : gs_bh[(size_t)x * kN + c];

    float state[kN];  // phase R: row threads S[c][.], column threads S[.][c]
    for (int chunk = n_chunks - 1; chunk >= 0; --chunk) {
        const int t0 = chunk * kK;
        const int len = (T - t0) < kK ? (T - t0) : kK;

        // ---- phase R: recompute S_{t0-1} .. S_{t0+len-1} from the checkpoint.
        const float* chk = checkpoints + ((size_t)bh * n_chunks + chunk) * matrix;
#pragma unroll
        for (int x = 0; x < kN; ++x) state[x] = row_thread ? chk[(size_t)c * kN + x] : chk[(size_t)x * kN + c];
        if (!row_thread) {
#pragma unroll
            for (int x = 0; x < kN; ++x) my_states[(size_t)x * kN + c] = state[x];
        }
        for (int s = 0; s < len; ++s) {
            const size_t idx = seq_index(batch, t0 + s, head, T, H) + c;
            __syncthreads();
            if (row_thread) {
                v_s[c] = to_float(v[idx]);
            } else {
                d_s[c] = decay_from_raw(to_float(w[idx]));
                k_s[c] = to_float(k[idx]);
                a_s[c] = to_float(a[idx]);
                b_s[c] = to_float(b[idx]);
            }
            __syncthreads();
            if (row_thread) {
                float u_i = 0.f;
#pragma unroll
                for (int j = 0; j < kN; ++j) u_i = fmaf(state[j], a_s[j], u_i);
                const float v_i = v_s[c];
#pragma unroll
                for (int j = 0; j < kN; ++j) state[j] = fmaf(state[j], d_s[j], fmaf(u_i, b_s[j], v_i * k_s[j]));
                u_s[c] = u_i;
                my_u[(size_t)s * kN + c] = u_i;
            }
            __syncthreads();  // u_t is in shared memory
            if (!row_thread) {
                const float d_j = d_s[c], k_j = k_s[c], b_j = b_s[c];
                float* out = my_states + (size_t)(s + 1) * matrix + c;
#pragma unroll
                for (int x = 0; x < kN; ++x) {
                    state[x] = fmaf(state[x], d_j, fmaf(u_s[x], b_j, v_s[x] * k_j));
                    out[(size_t)x * kN] = state[x];
                }
            }
        }

        // ---- phase B: the chunk's steps in reverse.
        for (int s = len - 1; s >= 0; --s) {
            const size_t idx = seq_index(batch, t0 + s, head, T, H) + c;
            float w_j = 0.f;
            __syncthreads();  // the previous step (or phase R) is done with the shared values
            if (row_thread) {
                v_s[c] = to_float(v[idx]);
                gy_s[c] = to_float(gy[idx]);
                u_s[c] = my_u[(size_t)s * kN + c];
            } else {
                w_j = to_float(w[idx]);
                r_s[c] = to_float(r[idx]);
                d_s[c] = decay_from_raw(w_j);
                k_s[c] = to_float(k[idx]);
                a_s[c] = to_float(a[idx]);
                b_s[c] = to_float(b[idx]);
            }
            __syncthreads();
            if (row_thread) {
                // carry becomes A_t[c][.] = gy_t[c] r_t + P_t[c][.]; then gv, gu; then P_{t-1}[c][.].
                const float gy_i = gy_s[c];
                float gv_i = 0.f, gu_i = 0.f;
#pragma unroll
                for (int j = 0; j < kN; ++j) {
                    carry[j] = fmaf(gy_i, r_s[j], carry[j]);
                    gv_i = fmaf(carry[j], k_s[j], gv_i);
                    gu_i = fmaf(carry[j], b_s[j], gu_i);
                }
                gu_s[c] = gu_i;
#pragma unroll
                for (int j = 0; j < kN; ++j) carry[j] = fmaf(carry[j], d_s[j], gu_i * a_s[j]);
                gv[idx] = from_float<F>(gv_i);
            } else {
                const float r_j = r_s[c];
                const float* now = my_states + (size_t)(s + 1) * matrix + c;  // S_t[.][c]
                const float* before = my_states + (size_t)s * matrix + c;    // S_{t-1}[.][c]
                float gr_j = 0.f, gk_j = 0.f, gb_j = 0.f, gd_j = 0.f;
#pragma unroll
                for (int x = 0; x < kN; ++x) {
                    carry[x] = fmaf(gy_s[x], r_j, carry[x]);  // A_t[x][c]
                    gr_j = fmaf(now[(size_t)x * kN], gy_s[x], gr_j);
                    gk_j = fmaf(carry[x], v_s[x], gk_j);
                    gb_j = fmaf(carry[x], u_s[x], gb_j);
                    gd_j = fmaf(carry[x], before[(size_t)x * kN], gd_j);  // S_{t-1}[x][c]
                }
                const float sig = sigmoid_of(w_j);
                const float sig_neg = sigmoid_of(-w_j);  // 1 - sigmoid(w), without cancellation
                const float lambda = -kDecayScale * sig;
                gr[idx] = from_float<F>(gr_j);
                gk[idx] = from_float<F>(gk_j);
                gb[idx] = from_float<F>(gb_j);
                gw[idx] = from_float<F>(gd_j * d_s[c] * lambda * sig_neg);
            }
            __syncthreads();  // gu_t is in shared memory
            if (!row_thread) {
                const float d_j = d_s[c], a_j = a_s[c];
                const float* before = my_states + (size_t)s * matrix + c;  // S_{t-1}[.][c], read again (registers)
                float ga_j = 0.f;
#pragma unroll
                for (int x = 0; x < kN; ++x) {
                    ga_j = fmaf(before[(size_t)x * kN], gu_s[x], ga_j);
                    carry[x] = fmaf(carry[x], d_j, gu_s[x] * a_j);
                }
                ga[idx] = from_float<F>(ga_j);
            }
        }
    }

    if (row_thread) {
        float* out = gs0 + (size_t)bh * matrix + (size_t)c * kN;
#pragma unroll
        for (int x = 0; x < kN; ++x) out[x] = carry[x];
    }
}

}  // namespace wkv7_detail

using wkv7_detail::wkv7_forward_kernel;
using wkv7_detail::wkv7_backward_kernel;
using wkv7_detail::kN;
using wkv7_detail::kK;

// Host launchers, called from cuda/wkv7_op.cpp on the caller's stream. They return the launch status.
// Sizes: checkpoints B*H*ceil(T/K)*N*N floats; scratch_states B*H*(K+1)*N*N floats; scratch_u B*H*K*N floats.
int wkv7_chunk_len() { return kK; }

cudaError_t wkv7_cuda_forward(int B, int T, int H,
                              const wkv7_elem_t* r, const wkv7_elem_t* w, const wkv7_elem_t* k,
                              const wkv7_elem_t* v, const wkv7_elem_t* a, const wkv7_elem_t* b,
                              const float* s0, wkv7_elem_t* y, float* s_out, float* checkpoints, cudaStream_t stream)
{
    if (B < 1 || H < 1 || T < 1 || T > _T_) return cudaErrorInvalidValue;
    wkv7_forward_kernel<wkv7_elem_t><<<B * H, kN, 0, stream>>>(T, H, r, w, k, v, a, b, s0, y, s_out, checkpoints);
    return cudaGetLastError();
}

cudaError_t wkv7_cuda_backward(int B, int T, int H,
                               const wkv7_elem_t* r, const wkv7_elem_t* w, const wkv7_elem_t* k,
                               const wkv7_elem_t* v, const wkv7_elem_t* a, const wkv7_elem_t* b,
                               const float* checkpoints, const wkv7_elem_t* gy, const float* gs_out,
                               wkv7_elem_t* gr, wkv7_elem_t* gw, wkv7_elem_t* gk, wkv7_elem_t* gv,
                               wkv7_elem_t* ga, wkv7_elem_t* gb, float* gs0,
                               float* scratch_states, float* scratch_u, cudaStream_t stream)
{
    if (B < 1 || H < 1 || T < 1 || T > _T_) return cudaErrorInvalidValue;
    wkv7_backward_kernel<wkv7_elem_t><<<B * H, 2 * kN, 0, stream>>>(
        T, H, r, w, k, v, a, b, checkpoints, gy, gs_out, gr, gw, gk, gv, ga, gb, gs0, scratch_states, scratch_u);
    return cudaGetLastError();
}
