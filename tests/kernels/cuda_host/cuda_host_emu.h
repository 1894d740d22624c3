// Host emulation of the CUDA C subset used by lwgpu/kernels/cuda/mmd.cu, so that g++ compiles that very
// file and its __global__ kernels run on the CPU, honouring the launch's grid, block and dynamic shared
// memory size.
//
// Execution model (what a kernel sees):
//   * blocks run one after another (grid order x, then y, then z), so block-level storage may be static:
//     `__shared__` is `static`, and the dynamic shared memory (LWGPU_DYNAMIC_SHARED in mmd.cu) is one
//     buffer of exactly the launch's byte count, poisoned with 0xFF bytes (NaN as float/double) at the
//     start of every block and followed by a guard zone that is checked after the block: a read of
//     shared memory nobody wrote gives NaN, a write past the end fails the launch;
//   * each block runs blockDim.x * blockDim.y * blockDim.z std::threads at once; threadIdx, blockIdx,
//     blockDim and gridDim are thread_local;
//   * __syncthreads() is a generation barrier (mutex + condition variable) over the block's threads; a
//     thread that returns from the kernel leaves the barrier's count (as exited threads do on a GPU);
//     a barrier that some threads never reach times out and fails the launch instead of hanging;
//   * device built-ins are their exact host counterparts: __ldg is a plain load, fmaf/fminf are libm's,
//     ex2.approx.ftz.f32 is exp2f with subnormal inputs and results flushed to zero (the instruction is
//     within 2 ulp of 2^x); atomicAdd takes a global lock.
// No warp intrinsics are provided: mmd.cu uses none (its reductions go through shared memory), and a
// kernel that starts to use one fails to compile here until it is emulated.
#pragma once

#include <math.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#define LWGPU_HOST_EMU 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define LWGPU_DYNAMIC_SHARED(T, name) T* const name = reinterpret_cast<T*>(::lwgpu_emu::dynamic_shared())

struct uint3 {
    unsigned int x, y, z;
};

struct dim3 {
    unsigned int x, y, z;
    dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

struct alignas(16) float4 {
    float x, y, z, w;
};

inline thread_local uint3 threadIdx{0, 0, 0};
inline thread_local uint3 blockIdx{0, 0, 0};
inline thread_local dim3 blockDim{1, 1, 1};
inline thread_local dim3 gridDim{1, 1, 1};

// CUDA's overloaded integer/float min and max (math_functions.h)
inline int min(int a, int b) { return a < b ? a : b; }
inline unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned int max(unsigned int a, unsigned int b) { return a > b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double max(double a, double b) { return fmax(a, b); }

template <typename T>
inline T __ldg(const T* p) { return *p; }
inline float __expf(float x) { return expf(x); }
inline float __exp2f(float x) { return exp2f(x); }
inline float __fdividef(float a, float b) { return a / b; }

namespace lwgpu_emu {

/// Raised in a thread waiting at a barrier that can no longer complete (another thread failed or it timed out).
struct BarrierBroken : std::runtime_error {
    using std::runtime_error::runtime_error;
};

/// A launch that did not run as CUDA would: bad geometry, broken barrier, shared-memory overrun.
struct LaunchError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

/// Reusable generation barrier over the threads of one block.
class Barrier {
  public:
    explicit Barrier(int expected) : expected_(expected) {}

    void sync() {
        std::unique_lock<std::mutex> lk(m_);
        if (broken_) throw BarrierBroken(why_);
        const unsigned long long gen = gen_;
        if (++arrived_ == expected_) {
            release();
            return;
        }
        const bool done = cv_.wait_for(lk, std::chrono::seconds(timeout_s),
                                       [&] { return gen_ != gen || broken_; });
        if (broken_) throw BarrierBroken(why_);
        if (!done) {
            fail_locked("__syncthreads timed out after " + std::to_string(timeout_s) + " s: " +
                        std::to_string(expected_ - arrived_) + " thread(s) of the block never reached it");
            throw BarrierBroken(why_);
        }
    }

    /// The calling thread has left the kernel: later barriers wait for one thread fewer.
    void drop() {
        std::lock_guard<std::mutex> lk(m_);
        --expected_;
        if (arrived_ > 0 && arrived_ == expected_) release();
    }

    void fail(const std::string& why) {
        std::lock_guard<std::mutex> lk(m_);
        fail_locked(why);
    }

    bool broken() {
        std::lock_guard<std::mutex> lk(m_);
        return broken_;
    }

    std::string why() {
        std::lock_guard<std::mutex> lk(m_);
        return why_;
    }

    static constexpr int timeout_s = 30;

  private:
    void release() {
        arrived_ = 0;
        ++gen_;
        cv_.notify_all();
    }

    void fail_locked(const std::string& why) {
        if (!broken_) {
            broken_ = true;
            why_ = why;
        }
        cv_.notify_all();
    }

    std::mutex m_;
    std::condition_variable cv_;
    int expected_;
    int arrived_ = 0;
    unsigned long long gen_ = 0;
    bool broken_ = false;
    std::string why_;
};

struct BlockContext {
    Barrier barrier;
    unsigned char* shared;
    explicit BlockContext(int threads, unsigned char* smem) : barrier(threads), shared(smem) {}
};

inline thread_local BlockContext* current_block = nullptr;
inline std::mutex atomic_mutex;

inline unsigned char* dynamic_shared() { return current_block->shared; }

inline void syncthreads() { current_block->barrier.sync(); }

/// ex2.approx.ftz.f32: 2^x with subnormal inputs and outputs flushed to (sign-preserving) zero.
inline float ex2_approx_ftz(float x) {
    if (fpclassify(x) == FP_SUBNORMAL) x = copysignf(0.f, x);
    const float y = exp2f(x);
    return fpclassify(y) == FP_SUBNORMAL ? copysignf(0.f, y) : y;
}

constexpr std::size_t kSharedLimit = 48 * 1024;  // dynamic shared memory per block without an opt-in attribute
constexpr std::size_t kGuardBytes = 256;
constexpr unsigned char kPoison = 0xFF;

/// Run ``kernel()`` (a closure calling one __global__ function) as the launch <<<grid, block, shared_bytes>>>.
template <typename F>
void launch(dim3 grid, dim3 block, std::size_t shared_bytes, F&& kernel) {
    const unsigned long long nthreads = (unsigned long long)block.x * block.y * block.z;
    if (nthreads == 0 || nthreads > 1024 || block.z > 64)
        throw LaunchError("invalid block " + std::to_string(block.x) + "x" + std::to_string(block.y) + "x" +
                          std::to_string(block.z) + ": 1..1024 threads, z <= 64");
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535)
        throw LaunchError("invalid grid " + std::to_string(grid.x) + "x" + std::to_string(grid.y) + "x" +
                          std::to_string(grid.z) + ": x in 1..2^31-1, y and z in 1..65535");
    if (shared_bytes > kSharedLimit)
        throw LaunchError("dynamic shared memory of " + std::to_string(shared_bytes) + " bytes exceeds the " +
                          std::to_string(kSharedLimit) + "-byte default limit per block");
    std::vector<unsigned char> storage(shared_bytes + kGuardBytes + 16);
    unsigned char* smem = storage.data();
    smem += (16 - reinterpret_cast<std::uintptr_t>(smem) % 16) % 16;  // __align__(16), as on the device
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                std::memset(smem, kPoison, shared_bytes + kGuardBytes);
                BlockContext ctx(static_cast<int>(nthreads), smem);
                std::vector<std::thread> threads;
                threads.reserve(nthreads);
                for (unsigned tz = 0; tz < block.z; ++tz)
                    for (unsigned ty = 0; ty < block.y; ++ty)
                        for (unsigned tx = 0; tx < block.x; ++tx)
                            threads.emplace_back([&, tx, ty, tz] {
                                threadIdx = uint3{tx, ty, tz};
                                blockIdx = uint3{bx, by, bz};
                                blockDim = block;
                                gridDim = grid;
                                current_block = &ctx;
                                try {
                                    kernel();
                                } catch (const BarrierBroken&) {
                                } catch (const std::exception& e) {
                                    ctx.barrier.fail(e.what());
                                } catch (...) {
                                    ctx.barrier.fail("unknown exception in the kernel");
                                }
                                current_block = nullptr;
                                ctx.barrier.drop();
                            });
                for (auto& t : threads) t.join();
                const std::string where = " (block " + std::to_string(bx) + "," + std::to_string(by) + "," +
                                          std::to_string(bz) + ")";
                if (ctx.barrier.broken()) throw LaunchError(ctx.barrier.why() + where);
                for (std::size_t i = 0; i < kGuardBytes; ++i)
                    if (smem[shared_bytes + i] != kPoison)
                        throw LaunchError("the kernel wrote at byte " + std::to_string(shared_bytes + i) +
                                          " of dynamic shared memory, past the " + std::to_string(shared_bytes) +
                                          " bytes given at launch" + where);
            }
}

}  // namespace lwgpu_emu

inline void __syncthreads() { lwgpu_emu::syncthreads(); }

inline float atomicAdd(float* p, float v) {
    std::lock_guard<std::mutex> lk(lwgpu_emu::atomic_mutex);
    const float old = *p;
    *p = old + v;
    return old;
}
inline double atomicAdd(double* p, double v) {
    std::lock_guard<std::mutex> lk(lwgpu_emu::atomic_mutex);
    const double old = *p;
    *p = old + v;
    return old;
}
inline int atomicAdd(int* p, int v) {
    std::lock_guard<std::mutex> lk(lwgpu_emu::atomic_mutex);
    const int old = *p;
    *p = old + v;
    return old;
}
