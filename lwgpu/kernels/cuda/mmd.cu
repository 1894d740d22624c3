// Fused Gaussian-kernel cross terms between query specs and a tile of bank specs (squared-MMD search).
//
//   out[q, n] = sum_i qw[q,i] sum_j bb[n,j] exp(-gamma |a_qi - b_nj|^2)
//
// One block per (query q, group of `spb` consecutive bank specs). The query's points (pre-centred,
// pre-scaled about the query's own centre) sit in shared memory; each thread owns one bank point (its centred coordinates in
// registers when d <= DR), loops over the query points and accumulates
// s = sum_i qw_i * 2^(log2e * (2 gamma a.b - gamma |a|^2 - gamma |b|^2)) in float (Acc = float) or
// double (Acc = double). The bank weights and the per-spec sum are applied through shared memory, so no
// K x K block is ever stored. Bank loads are float32.
//
// Host-side preparation (lwgpu/kernels/cupy_mmd.py):
//   qp  (Q, Kq, ds)  float32: (a - center) * 2 gamma log2e, rows zero-padded to ds (ds = DR, or d when DR = 0)
//   qn  (Q, Kq)      float32: gamma log2e |a - center|^2
//   qw  (Q, Kq)      float32: query weights (0 on padding points)
//   bz  (T, K, d)    float32: bank points (raw); bb (T, K) float32 weights (0 on padding)
//   center (Q, d)    float32: each query's centre (its points' mean); g2 = gamma * log2e
// Entry points (extern "C", no name mangling): mmd_cross_<acc>_<dr>, acc in {f32, f64}, dr in {d16, d32,
// d64, dgen} (d64 may use up to 255 registers: one block per SM, no spills). Dynamic shared memory: (qtile * ds + 2 * qtile) floats (+ alignment) + spb * K * sizeof(Acc).

// No #include: the file compiles both under nvcc and under NVRTC (CuPy RawModule) as is. It also compiles
// with g++ under the host emulation harness (tests/kernels/cuda_host/cuda_host_emu.h, which defines
// LWGPU_HOST_EMU and LWGPU_DYNAMIC_SHARED before including this file): the CPU tests run these kernels.

#ifndef LWGPU_DYNAMIC_SHARED  // the block's dynamic shared memory (size given at launch)
#define LWGPU_DYNAMIC_SHARED(T, name) extern __shared__ __align__(16) T name[]
#endif

namespace {

typedef unsigned long long idx_t;  // 64-bit offsets (NVRTC has no <cstddef> size_t by default)

__device__ __forceinline__ float fast_exp2(float x) {
#ifdef LWGPU_HOST_EMU
    return lwgpu_emu::ex2_approx_ftz(x);  // the same instruction's result, computed on the CPU
#else
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
#endif
}

template <int DR, typename Acc>
__device__ __forceinline__ void mmd_cross_impl(
    const float* __restrict__ qp, const float* __restrict__ qn, const float* __restrict__ qw,
    const float* __restrict__ bz, const float* __restrict__ bb, const float* __restrict__ center,
    int Q, int Kq, int d, int T, int K, int spb, int qtile, float g2, double* __restrict__ out) {
    LWGPU_DYNAMIC_SHARED(unsigned char, smem);
    const int ds = DR > 0 ? DR : d;  // row stride of the query points in shared memory
    float* sq = reinterpret_cast<float*>(smem);
    float* sn = sq + (idx_t)qtile * ds;
    float* sw = sn + qtile;
    idx_t part_off = (((idx_t)qtile * ds + 2 * (idx_t)qtile) * sizeof(float) + 15) & ~(idx_t)15;
    Acc* part = reinterpret_cast<Acc*>(smem + part_off);
    float* sc = reinterpret_cast<float*>(smem + part_off + (idx_t)spb * K * sizeof(Acc));  // DR == 0 only

    const int q = blockIdx.y;
    const long long n0 = (long long)blockIdx.x * spb;
    if (n0 >= T) return;
    const int nspec = (int)min((long long)spb, (long long)T - n0);
    const int P = nspec * K;
    const bool single_tile = Kq <= qtile;
    const float* qp_q = qp + (idx_t)q * Kq * ds;
    const float* cq = center + (idx_t)q * d;

    if (DR == 0) {
        for (int c = threadIdx.x; c < d; c += blockDim.x) sc[c] = cq[c];
    }
    if (single_tile) {
        for (int idx = threadIdx.x; idx < Kq * ds; idx += blockDim.x) sq[idx] = qp_q[idx];
        for (int idx = threadIdx.x; idx < Kq; idx += blockDim.x) {
            sn[idx] = qn[(idx_t)q * Kq + idx];
            sw[idx] = qw[(idx_t)q * Kq + idx];
        }
    }
    __syncthreads();

    for (int f0 = 0; f0 < P; f0 += blockDim.x) {  // uniform trip count: __syncthreads below is safe
        const int f = f0 + threadIdx.x;
        const bool active = f < P;
        const float* bp = bz + ((idx_t)n0 * K + (active ? f : 0)) * d;
        float b[DR > 0 ? DR : 1];
        float bn = 0.f;
        if (DR > 0) {
#pragma unroll
            for (int c = 0; c < (DR > 0 ? DR : 1); ++c) {
                float v = (active && c < d) ? __ldg(bp + c) - __ldg(cq + c) : 0.f;
                b[c] = v;
                bn = fmaf(v, v, bn);
            }
        } else if (active) {
            for (int c = 0; c < d; ++c) {
                float v = __ldg(bp + c) - sc[c];
                bn = fmaf(v, v, bn);
            }
        }
        const float bterm = -g2 * bn;
        Acc s = Acc(0);
        for (int i0 = 0; i0 < Kq; i0 += qtile) {
            const int nt = min(qtile, Kq - i0);
            if (!single_tile) {
                __syncthreads();
                for (int idx = threadIdx.x; idx < nt * ds; idx += blockDim.x) sq[idx] = qp_q[(idx_t)i0 * ds + idx];
                for (int idx = threadIdx.x; idx < nt; idx += blockDim.x) {
                    sn[idx] = qn[(idx_t)q * Kq + i0 + idx];
                    sw[idx] = qw[(idx_t)q * Kq + i0 + idx];
                }
                __syncthreads();
            }
            if (active) {
#pragma unroll 2
                for (int i = 0; i < nt; ++i) {
                    const float w = sw[i];
                    if (w == 0.f) continue;  // same i for every thread: no divergence
                    float e = bterm - sn[i];
                    const float* a = sq + (idx_t)i * ds;
                    if (DR > 0) {
                        const float4* a4 = reinterpret_cast<const float4*>(a);
#pragma unroll
                        for (int c4 = 0; c4 < (DR > 0 ? DR : 4) / 4; ++c4) {
                            const float4 v = a4[c4];  // one broadcast shared load feeds four FMAs
                            e = fmaf(v.x, b[4 * c4 + 0], e);
                            e = fmaf(v.y, b[4 * c4 + 1], e);
                            e = fmaf(v.z, b[4 * c4 + 2], e);
                            e = fmaf(v.w, b[4 * c4 + 3], e);
                        }
                    } else {
                        for (int c = 0; c < d; ++c) e = fmaf(a[c], __ldg(bp + c) - sc[c], e);
                    }
                    s += Acc(w * fast_exp2(fminf(e, 0.f)));
                }
            }
        }
        if (active) part[f] = Acc(__ldg(bb + (idx_t)n0 * K + f)) * s;
    }
    __syncthreads();
    for (int t = threadIdx.x; t < nspec; t += blockDim.x) {  // deterministic per-spec sum
        Acc tot = Acc(0);
        for (int j = 0; j < K; ++j) tot += part[t * K + j];
        out[(idx_t)q * T + n0 + t] = double(tot);
    }
}

}  // namespace

#define LWGPU_MMD_ENTRY(NAME, DR, ACC, MINB)                                                                \
    extern "C" __global__ void __launch_bounds__(256, MINB) NAME(                                             \
        const float* __restrict__ qp, const float* __restrict__ qn, const float* __restrict__ qw,      \
        const float* __restrict__ bz, const float* __restrict__ bb, const float* __restrict__ center,  \
        int Q, int Kq, int d, int T, int K, int spb, int qtile, float g2, double* __restrict__ out) {   \
        mmd_cross_impl<DR, ACC>(qp, qn, qw, bz, bb, center, Q, Kq, d, T, K, spb, qtile, g2, out);       \
    }

LWGPU_MMD_ENTRY(mmd_cross_f32_d16, 16, float, 2)
LWGPU_MMD_ENTRY(mmd_cross_f32_d32, 32, float, 2)
LWGPU_MMD_ENTRY(mmd_cross_f32_d64, 64, float, 1)
LWGPU_MMD_ENTRY(mmd_cross_f32_dgen, 0, float, 2)
LWGPU_MMD_ENTRY(mmd_cross_f64_d16, 16, double, 2)
LWGPU_MMD_ENTRY(mmd_cross_f64_d32, 32, double, 2)
LWGPU_MMD_ENTRY(mmd_cross_f64_d64, 64, double, 1)
LWGPU_MMD_ENTRY(mmd_cross_f64_dgen, 0, double, 2)
