// WKV6 forward and backward CUDA kernels (our own). Self-contained: no torch headers, so it compiles alone with
//   nvcc -c -arch=sm_80 -O3 -D_N_=64 -D_T_=1024 -o wkv6_cuda.o cuda/wkv6_cuda.cu
// The torch binding is cuda/wkv6_op.cpp.
//
// Recurrence, per batch element b and head h (key index i, value index j, decay d_t[i] = exp(-exp(w_t[i]))):
//   y_t[j]      = sum_i r_t[i] * (u[i] k_t[i] v_t[j] + S_t[i][j])
//   S_{t+1}[i][j] = d_t[i] S_t[i][j] + k_t[i] v_t[j]            S_0 = s0 (given), S_T is written to s_out.
//
// Compile-time parameters:
//   _N_         head size (64 for RWKV6); each thread keeps one row or column of a N x N matrix in registers.
//   _T_         the largest T this build accepts. The kernels keep no per-step local memory, so _T_ only bounds
//               the input (checked on the host); a build is keyed by it so that limits are explicit.
//   WKV6_FP32   if defined, r/k/v/w/y and their gradients are float; otherwise bfloat16. Everything is
//               accumulated in float; u, the states and their gradients are always float.
// Memory layout: r, k, v, w, y and gradients [B, T, H, N] contiguous; u [H, N]; states [B, H, N(i), N(j)].
//
// Thread layout: one block per (b, h), so B*H blocks.
//   forward            N threads; thread j owns column j of S (S[.][j] in registers). Per step the block stages
//                      r_t, k_t, d_t and r*u*k in shared memory, then each thread forms y_t[j] and updates its
//                      column. The next step's inputs are loaded into registers before the current step's
//                      arithmetic, to hide global-memory latency.
//   backward pass 1    N threads, forward in time; thread i owns row i of S. Produces gr, gu (per b, h) and the
//                      "r side" terms p_t of the decay gradient (below), written to a float buffer q [B, T, H, N].
//                      Per step the block stages gy_t, v_t, gy_t*v_t and gy_{t+1} in shared memory.
//   backward pass 2    2N threads, backward in time. Threads N..2N-1 own column j of the adjoint dS = dL/dS_{t+1}
//                      (give gv, and dS_0 = the gradient of s0 at the end). Threads 0..N-1 own row i, holding the
//                      decayed carry C_t = d_{t+1} dS_{t+2} rather than dS_{t+1} itself (give gk and gw).
// Gradients (gy = dL/dy, gS = dL/dS_T; adjoint dS_T = gS, dS_t = d_t dS_{t+1} + r_t gy_t^T):
//   gr_t[i] = sum_j gy_t[j] S_t[i][j] + u[i] k_t[i] (gy_t . v_t)
//   gk_t[i] = sum_j dS_{t+1}[i][j] v_t[j] + r_t[i] u[i] (gy_t . v_t)
//   gv_t[j] = sum_i dS_{t+1}[i][j] k_t[i] + gy_t[j] sum_i r_t[i] u[i] k_t[i]
//   gu[i]   = sum_t r_t[i] k_t[i] (gy_t . v_t)
//   Decay: with a_m = sum_{q<=m} log d_q, y_t sees r_t exp(a_{t-1}) and k_s exp(-a_s), and S_T sees exp(a_{T-1}).
//   So dL/da_m = r_{m+1}[i] (gy_{m+1} . S_{m+1}[i,:]) - k_m[i] (dS_{m+1}[i,:] . v_m) for m < T-1, and
//   gS[i,:] . S_T[i,:] - k_{T-1}[i] (gS[i,:] . v_{T-1}) for m = T-1. Both terms contain r_{m+1}[i] k_m[i]
//   (gy_{m+1} . v_m) (through S_{m+1} = d_m S_m + k_m v_m^T and dS_{m+1} = d_{m+1} dS_{m+2} + r_{m+1} gy_{m+1}^T),
//   which cancels exactly; the kernel never forms it, and sums the cancellation-free increments
//     inc_m     = p_m - k_m[i] (C_m[i,:] . v_m),    C_m = d_{m+1} dS_{m+2}      (m < T-1)
//     p_m       = r_{m+1}[i] d_m[i] (gy_{m+1} . S_m[i,:])                    (m < T-1, pass 1)
//     inc_{T-1} = p_{T-1} = d_{T-1}[i] (gS[i,:] . S_{T-1}[i,:])                 (pass 1; no k term)
//   Pass 2's row threads keep C (at the first step C_{T-1} := gS and r_T := 0, and its k term is not used) and
//   form dS_{m+1} = C_m + r_{m+1} gy_{m+1}^T for gk, then C_{m-1} = d_m dS_{m+1}. dL/dlog d_t = sum_{m>=t} inc_m (a
//   reverse running sum per row thread) and dL/dw_t = dL/dlog d_t * log d_t, because log d = -exp(w).
//   Every exponential is of -exp(w) <= 0 or of w itself, never of a cumulative sum, and no term of gw is a
//   difference of large cancelling parts, so its rounding error stays relative to the increments themselves.

#include <cuda_runtime.h>
#include <cuda_bf16.h>

#ifndef _N_
#error "define the head size: -D_N_=64"
#endif
#ifndef _T_
#error "define the largest sequence length this build accepts: -D_T_=4096"
#endif

static_assert(_N_ >= 1 && _N_ <= 256, "head size _N_ must be in [1, 256] (one register row per thread)");
static_assert(_T_ >= 1, "_T_ (the largest accepted T) must be >= 1");

#ifdef WKV6_FP32
typedef float wkv_elem_t;
#else
typedef __nv_bfloat16 wkv_elem_t;
#endif

namespace wkv6_detail {

constexpr int kN = _N_;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename F>
__device__ __forceinline__ F from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Per-step decay d = exp(-exp(w)) in float, whatever the storage type of w.
__device__ __forceinline__ float decay_from_raw(float w) { return __expf(-__expf(w)); }

template <typename F>
__global__ void __launch_bounds__(kN) wkv6_forward_kernel(
    const int T, const int H,
    const F* __restrict__ r, const F* __restrict__ k, const F* __restrict__ v, const F* __restrict__ w,
    const float* __restrict__ u, const float* __restrict__ s0,
    F* __restrict__ y, float* __restrict__ s_out)
{
    const int bh = blockIdx.x;  // = b * H + h, also the [B, H] index of the state tensors
    const int b = bh / H;
    const int h = bh % H;
    const int j = threadIdx.x;  // this thread's value channel; it also stages key channel j
    const size_t step = (size_t)H * kN;
    const size_t first = ((size_t)b * T * H + h) * kN + j;

    __shared__ float r_s[kN], k_s[kN], d_s[kN], ruk_s[kN];

    const float u_j = u[h * kN + j];
    float state[kN];  // state[i] = S[i][j]
    const float* s0_bh = s0 + (size_t)bh * kN * kN;
#pragma unroll
    for (int i = 0; i < kN; ++i) state[i] = s0_bh[i * kN + j];

    float r_next = to_float(r[first]);
    float k_next = to_float(k[first]);
    float v_next = to_float(v[first]);
    float w_next = to_float(w[first]);

    for (int t = 0; t < T; ++t) {
        const size_t idx = first + (size_t)t * step;
        const float v_j = v_next;
        __syncthreads();  // everyone is done reading the previous step's shared values
        r_s[j] = r_next;
        k_s[j] = k_next;
        d_s[j] = decay_from_raw(w_next);
        ruk_s[j] = r_next * u_j * k_next;
        __syncthreads();
        if (t + 1 < T) {  // issue the next step's loads now; they are consumed one iteration later
            r_next = to_float(r[idx + step]);
            k_next = to_float(k[idx + step]);
            v_next = to_float(v[idx + step]);
            w_next = to_float(w[idx + step]);
        }
        float from_state = 0.f;
        float bonus = 0.f;
#pragma unroll
        for (int i = 0; i < kN; ++i) {
            from_state = fmaf(r_s[i], state[i], from_state);
            bonus += ruk_s[i];
            state[i] = fmaf(state[i], d_s[i], k_s[i] * v_j);
        }
        y[idx] = from_float<F>(fmaf(bonus, v_j, from_state));
    }

    float* s_out_bh = s_out + (size_t)bh * kN * kN;
#pragma unroll
    for (int i = 0; i < kN; ++i) s_out_bh[i * kN + j] = state[i];
}

// Backward pass 1: forward in time, thread i owns row i of S.
template <typename F>
__global__ void __launch_bounds__(kN) wkv6_backward_rows_kernel(
    const int T, const int H,
    const F* __restrict__ r, const F* __restrict__ k, const F* __restrict__ v, const F* __restrict__ w,
    const float* __restrict__ u, const float* __restrict__ s0,
    const F* __restrict__ gy, const float* __restrict__ gs_out,
    F* __restrict__ gr, float* __restrict__ q, float* __restrict__ gu_part)
{
    const int bh = blockIdx.x;
    const int b = bh / H;
    const int h = bh % H;
    const int i = threadIdx.x;  // this thread's key channel (row of S); it also stages value channel i
    const size_t step = (size_t)H * kN;
    const size_t first = ((size_t)b * T * H + h) * kN + i;

    __shared__ float gy_s[kN], v_s[kN], gyv_s[kN], gy_next_s[kN];

    const float u_i = u[h * kN + i];
    float state[kN];  // state[j] = S[i][j]
    const float* s0_row = s0 + (size_t)bh * kN * kN + (size_t)i * kN;
#pragma unroll
    for (int j = 0; j < kN; ++j) state[j] = s0_row[j];
    const float* gs_row = gs_out + (size_t)bh * kN * kN + (size_t)i * kN;

    float gy_here = to_float(gy[first]);
    float r_i = to_float(r[first]);
    float gu_acc = 0.f;
    for (int t = 0; t < T; ++t) {
        const size_t idx = first + (size_t)t * step;
        const bool last = t + 1 == T;
        const float gy_next = last ? 0.f : to_float(gy[idx + step]);  // gy_{t+1}[i]; nothing after the last step
        const float r_next = last ? 1.f : to_float(r[idx + step]);    // r_{t+1}[i]; 1 for the gS term below
        const float v_here = to_float(v[idx]);
        const float k_i = to_float(k[idx]);
        const float d_i = decay_from_raw(to_float(w[idx]));
        __syncthreads();
        gy_s[i] = gy_here;
        v_s[i] = v_here;
        gyv_s[i] = gy_here * v_here;
        gy_next_s[i] = gy_next;
        __syncthreads();
        float gy_dot_v = 0.f;
        float from_state = 0.f;  // sum_j gy_t[j] S_t[i][j]
        float next_dot = 0.f;    // sum_j gy_{t+1}[j] S_t[i][j], or at the last step sum_j gS[i][j] S_{T-1}[i][j]
        if (last) {
#pragma unroll
            for (int j = 0; j < kN; ++j) next_dot = fmaf(gs_row[j], state[j], next_dot);
        }
#pragma unroll
        for (int j = 0; j < kN; ++j) {
            gy_dot_v += gyv_s[j];
            from_state = fmaf(gy_s[j], state[j], from_state);
            next_dot = fmaf(gy_next_s[j], state[j], next_dot);  // gy_next_s is 0 at the last step
            state[j] = fmaf(state[j], d_i, k_i * v_s[j]);
        }
        gr[idx] = from_float<F>(fmaf(u_i * k_i, gy_dot_v, from_state));
        q[idx] = r_next * d_i * next_dot;  // p_t (header)
        gu_acc = fmaf(r_i * k_i, gy_dot_v, gu_acc);
        gy_here = gy_next;
        r_i = r_next;
    }
    gu_part[bh * kN + i] = gu_acc;
}

// Backward pass 2: backward in time. Threads [0, N) own row i of the adjoint, threads [N, 2N) own column j.
template <typename F>
__global__ void __launch_bounds__(2 * kN) wkv6_backward_adjoint_kernel(
    const int T, const int H,
    const F* __restrict__ r, const F* __restrict__ k, const F* __restrict__ v, const F* __restrict__ w,
    const float* __restrict__ u, const F* __restrict__ gy, const float* __restrict__ gs_out,
    const float* __restrict__ q,
    F* __restrict__ gk, F* __restrict__ gv, F* __restrict__ gw, float* __restrict__ gs0)
{
    const int bh = blockIdx.x;
    const int b = bh / H;
    const int h = bh % H;
    const bool owns_row = threadIdx.x < kN;
    const int c = owns_row ? threadIdx.x : threadIdx.x - kN;  // row i or column j
    const size_t step = (size_t)H * kN;
    const size_t first = ((size_t)b * T * H + h) * kN + c;

    __shared__ float r_s[kN], k_s[kN], d_s[kN], ruk_s[kN];
    __shared__ float gy_s[kN], v_s[kN], gyv_s[kN], gy_next_s[kN];

    const float u_c = u[h * kN + c];
    const float* gs_bh = gs_out + (size_t)bh * kN * kN;
    // Row thread: adj[j] = C_t[c][j] = d_{t+1} dS_{t+2}[c][j] (the decayed carry; gS at the first step).
    // Column thread: adj[i] = dS_{t+1}[i][c].
    float adj[kN];
    if (owns_row) {
#pragma unroll
        for (int x = 0; x < kN; ++x) adj[x] = gs_bh[(size_t)c * kN + x];
    } else {
#pragma unroll
        for (int x = 0; x < kN; ++x) adj[x] = gs_bh[(size_t)x * kN + c];
    }

    float log_decay_grad = 0.f;  // row threads: sum_{m >= t} inc_m
    float r_later = 0.f;         // row threads: r_{t+1}[c] (0 at the first step, where C already is dS_T = gS)
    float gy_later = 0.f;        // column threads: gy_{t+1}[c]
    for (int t = T - 1; t >= 0; --t) {
        const size_t idx = first + (size_t)t * step;
        float w_c = 0.f;
        float r_c = 0.f, k_c = 0.f, gy_c = 0.f, v_c = 0.f;
        if (owns_row) {
            r_c = to_float(r[idx]);
            k_c = to_float(k[idx]);
            w_c = to_float(w[idx]);
        } else {
            gy_c = to_float(gy[idx]);
            v_c = to_float(v[idx]);
        }
        __syncthreads();
        if (owns_row) {
            r_s[c] = r_c;
            k_s[c] = k_c;
            d_s[c] = decay_from_raw(w_c);
            ruk_s[c] = r_c * u_c * k_c;
        } else {
            gy_s[c] = gy_c;
            v_s[c] = v_c;
            gyv_s[c] = gy_c * v_c;
            gy_next_s[c] = gy_later;
        }
        __syncthreads();
        if (owns_row) {
            const float d_i = d_s[c];
            float gy_dot_v = 0.f;
            float carry_dot_v = 0.f;  // sum_j C_t[i][j] v_t[j]
            float adj_dot_v = 0.f;    // sum_j dS_{t+1}[i][j] v_t[j]
#pragma unroll
            for (int x = 0; x < kN; ++x) {
                gy_dot_v += gyv_s[x];
                const float adj_x = fmaf(r_later, gy_next_s[x], adj[x]);  // dS_{t+1}[i][x] = C_t + r_{t+1} gy_{t+1}
                carry_dot_v = fmaf(adj[x], v_s[x], carry_dot_v);
                adj_dot_v = fmaf(adj_x, v_s[x], adj_dot_v);
                adj[x] = adj_x * d_i;  // C_{t-1} = d_t dS_{t+1}
            }
            gk[idx] = from_float<F>(fmaf(r_c * u_c, gy_dot_v, adj_dot_v));
            log_decay_grad += t + 1 < T ? q[idx] - k_c * carry_dot_v : q[idx];  // inc_t (header)
            gw[idx] = from_float<F>(log_decay_grad * -__expf(w_c));
            r_later = r_c;
        } else {
            const float gy_j = gy_s[c];
            float ruk = 0.f;
            float adj_dot_k = 0.f;  // sum_i dS_{t+1}[i][j] k_t[i]
#pragma unroll
            for (int x = 0; x < kN; ++x) {
                ruk += ruk_s[x];
                adj_dot_k = fmaf(adj[x], k_s[x], adj_dot_k);
                adj[x] = fmaf(adj[x], d_s[x], r_s[x] * gy_j);
            }
            gv[idx] = from_float<F>(fmaf(gy_j, ruk, adj_dot_k));
            gy_later = gy_c;
        }
    }

    if (!owns_row) {
        float* gs0_bh = gs0 + (size_t)bh * kN * kN;
#pragma unroll
        for (int x = 0; x < kN; ++x) gs0_bh[(size_t)x * kN + c] = adj[x];
    }
}

}  // namespace wkv6_detail

using wkv6_detail::wkv6_forward_kernel;
using wkv6_detail::wkv6_backward_rows_kernel;
using wkv6_detail::wkv6_backward_adjoint_kernel;
using wkv6_detail::kN;

// Host launchers, called from cuda/wkv6_op.cpp on the caller's stream. They return the launch status.
cudaError_t wkv6_cuda_forward(int B, int T, int H,
                              const wkv_elem_t* r, const wkv_elem_t* k, const wkv_elem_t* v, const wkv_elem_t* w,
                              const float* u, const float* s0, wkv_elem_t* y, float* s_out, cudaStream_t stream)
{
    if (B < 1 || H < 1 || T < 1 || T > _T_) return cudaErrorInvalidValue;
    wkv6_forward_kernel<wkv_elem_t><<<B * H, kN, 0, stream>>>(T, H, r, k, v, w, u, s0, y, s_out);
    return cudaGetLastError();
}

cudaError_t wkv6_cuda_backward(int B, int T, int H,
                               const wkv_elem_t* r, const wkv_elem_t* k, const wkv_elem_t* v, const wkv_elem_t* w,
                               const float* u, const float* s0, const wkv_elem_t* gy, const float* gs_out,
                               wkv_elem_t* gr, wkv_elem_t* gk, wkv_elem_t* gv, wkv_elem_t* gw,
                               float* gu_part, float* gs0, float* q_scratch, cudaStream_t stream)
{
    if (B < 1 || H < 1 || T < 1 || T > _T_) return cudaErrorInvalidValue;
    wkv6_backward_rows_kernel<wkv_elem_t><<<B * H, kN, 0, stream>>>(
        T, H, r, k, v, w, u, s0, gy, gs_out, gr, q_scratch, gu_part);
    cudaError_t status = cudaGetLastError();
    if (status != cudaSuccess) return status;
    wkv6_backward_adjoint_kernel<wkv_elem_t><<<B * H, 2 * kN, 0, stream>>>(
        T, H, r, k, v, w, u, gy, gs_out, q_scratch, gk, gv, gw, gs0);
    return cudaGetLastError();
}
