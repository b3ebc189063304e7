// Torch binding of the WKV7 CUDA kernels in cuda/wkv7_cuda.cu (a pybind11 module, one per build, so builds for
// different head sizes, maximum T and element types can be loaded side by side).
// Built by src/ops/wkv7_cuda.py with -D_N_=<head size> -D_T_=<max T> and, for float inputs, -DWKV7_FP32.
//
//   forward(r, w, k, v, a, b, s0)                          -> [y, s_out, checkpoints]
//   backward(r, w, k, v, a, b, checkpoints, gy, gs_out)    -> [gr, gw, gk, gv, ga, gb, gs0]
// r, w, k, v, a, b, y, gy and gr..gb: [B, T, H, N] contiguous, this build's element type (w is the raw decay).
// s0, s_out, gs_out, gs0: [B, H, N, N] float32, indexed [b, h, value, key].
// checkpoints: [B, H, ceil(T / K), N, N] float32 (the state before every K-th token; K = chunk_len), made by
// forward for backward. Inputs are never written; every result is a new tensor.

#include <torch/extension.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>

#include <vector>

#ifdef WKV7_FP32
typedef float wkv7_elem_t;
static const auto kElemType = torch::kFloat32;
static const char* kElemName = "fp32";
#else
typedef __nv_bfloat16 wkv7_elem_t;
static const auto kElemType = torch::kBFloat16;
static const char* kElemName = "bf16";
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

namespace {

void check_tensor(const torch::Tensor& x, const char* name, torch::ScalarType dtype, torch::IntArrayRef shape,
                  const torch::Device& device) {
    TORCH_CHECK(x.device() == device, "wkv7 cuda: ", name, " is on ", x.device(), ", expected ", device);
    TORCH_CHECK(x.scalar_type() == dtype, "wkv7 cuda: ", name, " has dtype ", x.scalar_type(), ", this build (",
                kElemName, ") expects ", dtype);
    TORCH_CHECK(x.sizes() == shape, "wkv7 cuda: ", name, " has shape ", x.sizes(), ", expected ", shape);
    TORCH_CHECK(x.is_contiguous(), "wkv7 cuda: ", name, " must be contiguous");
}

int64_t n_chunks(int64_t T) { return (T + wkv7_chunk_len() - 1) / wkv7_chunk_len(); }

// Checks r, w, k, v, a, b against r's shape [B, T, H, N]; returns {B, T, H}.
std::vector<int64_t> check_sequences(const torch::Tensor& r, const torch::Tensor& w, const torch::Tensor& k,
                                     const torch::Tensor& v, const torch::Tensor& a, const torch::Tensor& b) {
    TORCH_CHECK(r.is_cuda(), "wkv7 cuda: r must be a CUDA tensor, got one on ", r.device());
    TORCH_CHECK(r.dim() == 4, "wkv7 cuda: r must be [B, T, H, N], got ", r.sizes());
    const int64_t B = r.size(0), T = r.size(1), H = r.size(2), N = r.size(3);
    TORCH_CHECK(N == _N_, "wkv7 cuda: head size ", N, " but this build is for head size ", _N_);
    TORCH_CHECK(T >= 1 && T <= _T_, "wkv7 cuda: T=", T, " is outside [1, ", _T_, "], the range this build accepts");
    TORCH_CHECK(B >= 1 && H >= 1, "wkv7 cuda: B and H must be >= 1, got ", r.sizes());
    const auto device = r.device();
    check_tensor(r, "r", kElemType, {B, T, H, N}, device);
    check_tensor(w, "w", kElemType, {B, T, H, N}, device);
    check_tensor(k, "k", kElemType, {B, T, H, N}, device);
    check_tensor(v, "v", kElemType, {B, T, H, N}, device);
    check_tensor(a, "a", kElemType, {B, T, H, N}, device);
    check_tensor(b, "b", kElemType, {B, T, H, N}, device);
    return {B, T, H};
}

template <typename T>
const T* ptr(const torch::Tensor& x) {
    return reinterpret_cast<const T*>(x.data_ptr());
}

template <typename T>
T* mutable_ptr(torch::Tensor& x) {
    return reinterpret_cast<T*>(x.data_ptr());
}

std::vector<torch::Tensor> forward(torch::Tensor r, torch::Tensor w, torch::Tensor k, torch::Tensor v,
                                   torch::Tensor a, torch::Tensor b, torch::Tensor s0) {
    const auto dims = check_sequences(r, w, k, v, a, b);
    const int64_t B = dims[0], T = dims[1], H = dims[2];
    check_tensor(s0, "s0", torch::kFloat32, {B, H, _N_, _N_}, r.device());
    const c10::cuda::CUDAGuard device_guard(r.device());
    auto y = torch::empty_like(r);
    auto s_out = torch::empty_like(s0);
    auto checkpoints = torch::empty({B, H, n_chunks(T), _N_, _N_}, s0.options());
    const cudaError_t status = wkv7_cuda_forward(
        static_cast<int>(B), static_cast<int>(T), static_cast<int>(H), ptr<wkv7_elem_t>(r), ptr<wkv7_elem_t>(w),
        ptr<wkv7_elem_t>(k), ptr<wkv7_elem_t>(v), ptr<wkv7_elem_t>(a), ptr<wkv7_elem_t>(b), ptr<float>(s0),
        mutable_ptr<wkv7_elem_t>(y), mutable_ptr<float>(s_out), mutable_ptr<float>(checkpoints),
        c10::cuda::getCurrentCUDAStream());
    TORCH_CHECK(status == cudaSuccess, "wkv7 cuda forward launch failed: ", cudaGetErrorString(status));
    return {y, s_out, checkpoints};
}

std::vector<torch::Tensor> backward(torch::Tensor r, torch::Tensor w, torch::Tensor k, torch::Tensor v,
                                    torch::Tensor a, torch::Tensor b, torch::Tensor checkpoints, torch::Tensor gy,
                                    torch::Tensor gs_out) {
    const auto dims = check_sequences(r, w, k, v, a, b);
    const int64_t B = dims[0], T = dims[1], H = dims[2];
    check_tensor(checkpoints, "checkpoints", torch::kFloat32, {B, H, n_chunks(T), _N_, _N_}, r.device());
    check_tensor(gy, "gy", kElemType, r.sizes(), r.device());
    check_tensor(gs_out, "gs_out", torch::kFloat32, {B, H, _N_, _N_}, r.device());
    const c10::cuda::CUDAGuard device_guard(r.device());
    auto gr = torch::empty_like(r);
    auto gw = torch::empty_like(w);
    auto gk = torch::empty_like(k);
    auto gv = torch::empty_like(v);
    auto ga = torch::empty_like(a);
    auto gb = torch::empty_like(b);
    auto gs0 = torch::empty_like(gs_out);
    const int64_t K = wkv7_chunk_len();
    auto scratch_states = torch::empty({B * H, K + 1, _N_, _N_}, gs_out.options());
    auto scratch_u = torch::empty({B * H, K, _N_}, gs_out.options());
    const cudaError_t status = wkv7_cuda_backward(
        static_cast<int>(B), static_cast<int>(T), static_cast<int>(H), ptr<wkv7_elem_t>(r), ptr<wkv7_elem_t>(w),
        ptr<wkv7_elem_t>(k), ptr<wkv7_elem_t>(v), ptr<wkv7_elem_t>(a), ptr<wkv7_elem_t>(b),
        ptr<float>(checkpoints), ptr<wkv7_elem_t>(gy), ptr<float>(gs_out), mutable_ptr<wkv7_elem_t>(gr),
        mutable_ptr<wkv7_elem_t>(gw), mutable_ptr<wkv7_elem_t>(gk), mutable_ptr<wkv7_elem_t>(gv),
        mutable_ptr<wkv7_elem_t>(ga), mutable_ptr<wkv7_elem_t>(gb), mutable_ptr<float>(gs0),
        mutable_ptr<float>(scratch_states), mutable_ptr<float>(scratch_u), c10::cuda::getCurrentCUDAStream());
    TORCH_CHECK(status == cudaSuccess, "wkv7 cuda backward launch failed: ", cudaGetErrorString(status));
    return {gr, gw, gk, gv, ga, gb, gs0};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "WKV7 CUDA kernels (forward, backward) for one head size, maximum T and element type";
    m.def("forward", &forward, "WKV7 forward: (r, w, k, v, a, b, s0) -> [y, s_out, checkpoints]");
    m.def("backward", &backward,
          "WKV7 backward: (r, w, k, v, a, b, checkpoints, gy, gs_out) -> [gr, gw, gk, gv, ga, gb, gs0]");
    m.attr("head_size") = _N_;
    m.attr("max_t") = _T_;
    m.attr("element_type") = kElemName;
    m.attr("chunk_len") = wkv7_chunk_len();
}
