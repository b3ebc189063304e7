// Torch binding of the WKV6 CUDA kernels in cuda/wkv6_cuda.cu (a pybind11 module, one per build, so builds for
// different head sizes, maximum T and element types can be loaded side by side).
// Built by src/ops/wkv6_cuda.py with -D_N_=<head size> -D_T_=<max T> and, for float inputs, -DWKV6_FP32.
//
//   forward(r, k, v, w, u, s0)                  -> [y, s_out]
//   backward(r, k, v, w, u, s0, gy, gs_out)     -> [gr, gk, gv, gw, gu_per_batch, gs0]
// r, k, v, w, y, gy and gr..gw: [B, T, H, N] contiguous, this build's element type. u: [H, N] float32.
// s0, s_out, gs_out, gs0: [B, H, N, N] float32. gu_per_batch: [B, H, N] float32 (sum it over B).
// Inputs are never written; every result is a new tensor.

#include <torch/extension.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>

#include <vector>

#ifdef WKV6_FP32
typedef float wkv_elem_t;
static const auto kElemType = torch::kFloat32;
static const char* kElemName = "fp32";
#else
typedef __nv_bfloat16 wkv_elem_t;
static const auto kElemType = torch::kBFloat16;
static const char* kElemName = "bf16";
#endif

cudaError_t wkv6_cuda_forward(int B, int T, int H,
                              const wkv_elem_t* r, const wkv_elem_t* k, const wkv_elem_t* v, const wkv_elem_t* w,
                              const float* u, const float* s0, wkv_elem_t* y, float* s_out, cudaStream_t stream);
cudaError_t wkv6_cuda_backward(int B, int T, int H,
                               const wkv_elem_t* r, const wkv_elem_t* k, const wkv_elem_t* v, const wkv_elem_t* w,
                               const float* u, const float* s0, const wkv_elem_t* gy, const float* gs_out,
                               wkv_elem_t* gr, wkv_elem_t* gk, wkv_elem_t* gv, wkv_elem_t* gw,
                               float* gu_part, float* gs0, float* q_scratch, cudaStream_t stream);

namespace {

void check_tensor(const torch::Tensor& x, const char* name, torch::ScalarType dtype, torch::IntArrayRef shape,
                  const torch::Device& device) {
    TORCH_CHECK(x.device() == device, "wkv6 cuda: ", name, " is on ", x.device(), ", expected ", device);
    TORCH_CHECK(x.scalar_type() == dtype, "wkv6 cuda: ", name, " has dtype ", x.scalar_type(), ", this build (",
                kElemName, ") expects ", dtype);
    TORCH_CHECK(x.sizes() == shape, "wkv6 cuda: ", name, " has shape ", x.sizes(), ", expected ", shape);
    TORCH_CHECK(x.is_contiguous(), "wkv6 cuda: ", name, " must be contiguous");
}

// Checks every input against r's shape [B, T, H, N]; returns {B, T, H}.
std::vector<int64_t> check_inputs(const torch::Tensor& r, const torch::Tensor& k, const torch::Tensor& v,
                                  const torch::Tensor& w, const torch::Tensor& u, const torch::Tensor& s0) {
    TORCH_CHECK(r.is_cuda(), "wkv6 cuda: r must be a CUDA tensor, got one on ", r.device());
    TORCH_CHECK(r.dim() == 4, "wkv6 cuda: r must be [B, T, H, N], got ", r.sizes());
    const int64_t B = r.size(0), T = r.size(1), H = r.size(2), N = r.size(3);
    TORCH_CHECK(N == _N_, "wkv6 cuda: head size ", N, " but this build is for head size ", _N_);
    TORCH_CHECK(T >= 1 && T <= _T_, "wkv6 cuda: T=", T, " is outside [1, ", _T_, "], the range this build accepts");
    const auto device = r.device();
    check_tensor(r, "r", kElemType, {B, T, H, N}, device);
    check_tensor(k, "k", kElemType, {B, T, H, N}, device);
    check_tensor(v, "v", kElemType, {B, T, H, N}, device);
    check_tensor(w, "w", kElemType, {B, T, H, N}, device);
    check_tensor(u, "u", torch::kFloat32, {H, N}, device);
    check_tensor(s0, "s0", torch::kFloat32, {B, H, N, N}, device);
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

std::vector<torch::Tensor> forward(torch::Tensor r, torch::Tensor k, torch::Tensor v, torch::Tensor w,
                                   torch::Tensor u, torch::Tensor s0) {
    const auto dims = check_inputs(r, k, v, w, u, s0);
    const int B = static_cast<int>(dims[0]), T = static_cast<int>(dims[1]), H = static_cast<int>(dims[2]);
    const c10::cuda::CUDAGuard device_guard(r.device());
    auto y = torch::empty_like(r);
    auto s_out = torch::empty_like(s0);
    const cudaError_t status = wkv6_cuda_forward(
        B, T, H, ptr<wkv_elem_t>(r), ptr<wkv_elem_t>(k), ptr<wkv_elem_t>(v), ptr<wkv_elem_t>(w), ptr<float>(u),
        ptr<float>(s0), mutable_ptr<wkv_elem_t>(y), mutable_ptr<float>(s_out), c10::cuda::getCurrentCUDAStream());
    TORCH_CHECK(status == cudaSuccess, "wkv6 cuda forward launch failed: ", cudaGetErrorString(status));
    return {y, s_out};
}

std::vector<torch::Tensor> backward(torch::Tensor r, torch::Tensor k, torch::Tensor v, torch::Tensor w,
                                    torch::Tensor u, torch::Tensor s0, torch::Tensor gy, torch::Tensor gs_out) {
    const auto dims = check_inputs(r, k, v, w, u, s0);
    const int B = static_cast<int>(dims[0]), T = static_cast<int>(dims[1]), H = static_cast<int>(dims[2]);
    check_tensor(gy, "gy", kElemType, r.sizes(), r.device());
    check_tensor(gs_out, "gs_out", torch::kFloat32, s0.sizes(), r.device());
    const c10::cuda::CUDAGuard device_guard(r.device());
    auto gr = torch::empty_like(r);
    auto gk = torch::empty_like(k);
    auto gv = torch::empty_like(v);
    auto gw = torch::empty_like(w);
    auto gu_part = torch::empty({dims[0], dims[2], _N_}, u.options());
    auto gs0 = torch::empty_like(s0);
    auto q_scratch = torch::empty(r.sizes(), r.options().dtype(torch::kFloat32));
    const cudaError_t status = wkv6_cuda_backward(
        B, T, H, ptr<wkv_elem_t>(r), ptr<wkv_elem_t>(k), ptr<wkv_elem_t>(v), ptr<wkv_elem_t>(w), ptr<float>(u),
        ptr<float>(s0), ptr<wkv_elem_t>(gy), ptr<float>(gs_out), mutable_ptr<wkv_elem_t>(gr),
        mutable_ptr<wkv_elem_t>(gk), mutable_ptr<wkv_elem_t>(gv), mutable_ptr<wkv_elem_t>(gw),
        mutable_ptr<float>(gu_part), mutable_ptr<float>(gs0), mutable_ptr<float>(q_scratch),
        c10::cuda::getCurrentCUDAStream());
    TORCH_CHECK(status == cudaSuccess, "wkv6 cuda backward launch failed: ", cudaGetErrorString(status));
    return {gr, gk, gv, gw, gu_part, gs0};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "WKV6 CUDA kernels (forward, backward) for one head size, maximum T and element type";
    m.def("forward", &forward, "WKV6 forward: (r, k, v, w, u, s0) -> [y, s_out]");
    m.def("backward", &backward,
          "WKV6 backward: (r, k, v, w, u, s0, gy, gs_out) -> [gr, gk, gv, gw, gu_per_batch, gs0]");
    m.attr("head_size") = _N_;
    m.attr("max_t") = _T_;
    m.attr("element_type") = kElemName;
}
