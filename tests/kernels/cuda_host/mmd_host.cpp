// Host build of lwgpu/kernels/cuda/mmd.cu: the kernel source itself is #included (found on the -I path, so a
// mutated copy can stand in for it), and one extern "C" launcher runs any of its mmd_cross_* entry points on
// the CPU under cuda_host_emu.h. Built by tests/kernels/cuda_host/harness.py:
//   g++ -O1 -std=c++17 -pthread -fPIC -shared -I<dir of mmd.cu> -I<this dir> mmd_host.cpp -o libmmd_host.so
//
// Global memory is guarded too: every array the kernel reads is copied between two zones of NaN (an
// out-of-bounds read poisons the result), and the output sits between two zones of a sentinel pattern
// that is checked after the launch (an out-of-bounds write fails it).
#include "cuda_host_emu.h"

#include "mmd.cu"

#include <cstdio>

namespace {

constexpr std::size_t kGuard = 1024;  // elements of guard zone on each side

typedef void (*MmdCrossFn)(const float*, const float*, const float*, const float*, const float*, const float*,
                           int, int, int, int, int, int, int, float, double*);

struct GuardedIn {
    std::vector<float> buf;
    GuardedIn(const float* src, long long n) : buf(static_cast<std::size_t>(n) + 2 * kGuard, NAN) {
        if (n > 0) std::memcpy(buf.data() + kGuard, src, static_cast<std::size_t>(n) * sizeof(float));
    }
    const float* ptr() const { return buf.data() + kGuard; }
};

const std::uint64_t kSentinel = 0x7ff8dead7ff8beefULL;  // a NaN payload no kernel result carries

}  // namespace

/// Launch ``fn`` (one of the kernels' extern "C" symbols) with <<<(gx, gy), bx, shared_bytes>>>.
/// Returns 0, or 1 with a message in ``err`` (launch error, barrier failure, out-of-bounds write).
extern "C" int lwgpu_emu_launch_mmd_cross(void* fn, unsigned gx, unsigned gy, unsigned bx,
                                          unsigned long long shared_bytes, const float* qp, long long n_qp,
                                          const float* qn, long long n_qn, const float* qw, long long n_qw,
                                          const float* bz, long long n_bz, const float* bb, long long n_bb,
                                          const float* center, long long n_center, int Q, int Kq, int d, int T,
                                          int K, int spb, int qtile, float g2, double* out, long long n_out,
                                          char* err, int errlen) {
    if (err && errlen > 0) err[0] = '\0';
    const GuardedIn gqp(qp, n_qp), gqn(qn, n_qn), gqw(qw, n_qw), gbz(bz, n_bz), gbb(bb, n_bb),
        gc(center, n_center);
    std::vector<double> gout(static_cast<std::size_t>(n_out) + 2 * kGuard);
    for (std::size_t i = 0; i < kGuard; ++i) {
        std::memcpy(&gout[i], &kSentinel, sizeof(double));
        std::memcpy(&gout[kGuard + n_out + i], &kSentinel, sizeof(double));
    }
    if (n_out > 0) std::memcpy(gout.data() + kGuard, out, static_cast<std::size_t>(n_out) * sizeof(double));
    const MmdCrossFn kernel = reinterpret_cast<MmdCrossFn>(fn);
    double* o = gout.data() + kGuard;
    try {
        lwgpu_emu::launch(dim3(gx, gy), dim3(bx), static_cast<std::size_t>(shared_bytes), [&] {
            kernel(gqp.ptr(), gqn.ptr(), gqw.ptr(), gbz.ptr(), gbb.ptr(), gc.ptr(), Q, Kq, d, T, K, spb, qtile, g2,
                   o);
        });
    } catch (const std::exception& e) {
        if (err && errlen > 0) std::snprintf(err, static_cast<std::size_t>(errlen), "%s", e.what());
        return 1;
    }
    for (std::size_t i = 0; i < kGuard; ++i) {
        std::uint64_t lo, hi;
        std::memcpy(&lo, &gout[i], sizeof(double));
        std::memcpy(&hi, &gout[kGuard + n_out + i], sizeof(double));
        if (lo != kSentinel || hi != kSentinel) {
            if (err && errlen > 0)
                std::snprintf(err, static_cast<std::size_t>(errlen),
                              "the kernel wrote outside out[0:%lld] (%s the array)", n_out,
                              lo != kSentinel ? "before" : "after");
            return 1;
        }
    }
    if (n_out > 0) std::memcpy(out, o, static_cast<std::size_t>(n_out) * sizeof(double));
    return 0;
}
