// Run-time instruction-set detection and choice for the fused decode kernels (see isa.h), and the ops
// that expose it to Python (arkern.backends.cpu_isa, set_cpu_isa, last_cpu_isa).
#include "isa.h"

#include <c10/util/Exception.h>
#include <torch/library.h>

#include <array>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "amx.h"

#if defined(__x86_64__)
#include <cpuid.h>
#endif
#if defined(__linux__) && defined(__x86_64__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace arkern_isa {

std::atomic<int> g_selected{-1};

namespace {

struct Cpu {
  bool avx2 = false, avx512 = false, amx = false;
  std::string why_avx2, why_avx512, why_amx;
};

#if defined(__x86_64__)
uint64_t xcr0() {
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<uint64_t>(hi) << 32) | lo;
}
#endif

// Linux keeps the 8 KB AMX tile state off until a process asks for it.
std::string request_tile_permission() {
#if defined(__linux__) && defined(__x86_64__)
  constexpr int kArchGetXcompPerm = 0x1022, kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) != 0)
    return "the kernel refused the AMX tile state (arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) failed; "
           "Linux >= 5.16 is needed)";
  uint64_t granted = 0;
  if (syscall(SYS_arch_prctl, kArchGetXcompPerm, &granted) != 0 || !(granted & (1ull << kXfeatureXtiledata)))
    return "the kernel did not grant the AMX tile state (ARCH_GET_XCOMP_PERM)";
  return "";
#elif defined(__x86_64__)
  return "AMX needs Linux here (arch_prctl(ARCH_REQ_XCOMP_PERM) to enable the tile state)";
#else
  return "not an x86-64 machine";
#endif
}

Cpu detect() {
  Cpu c;
#if defined(__x86_64__)
  unsigned a = 0, b = 0, cx = 0, d = 0;
  __get_cpuid_count(1, 0, &a, &b, &cx, &d);
  const bool fma = cx & (1u << 12), osxsave = cx & (1u << 27);
  const uint64_t xcr = osxsave ? xcr0() : 0;
  unsigned b7 = 0, c7 = 0, d7 = 0;
  if (__get_cpuid_max(0, nullptr) >= 7) __get_cpuid_count(7, 0, &a, &b7, &c7, &d7);
  const bool ymm_os = (xcr & 0x6) == 0x6, zmm_os = (xcr & 0xe6) == 0xe6;
  c.avx2 = (b7 & (1u << 5)) && fma && ymm_os;
  if (!c.avx2) c.why_avx2 = "the CPU (or the OS) lacks AVX2 + FMA";
  const bool avx512_cpu = (b7 & (1u << 16)) && (b7 & (1u << 17)) && (b7 & (1u << 30)) && (b7 & (1u << 31));
#if defined(__AVX512F__)
  c.avx512 = avx512_cpu && zmm_os;
  if (!c.avx512) c.why_avx512 = "the CPU (or the OS) lacks AVX-512 F/DQ/BW/VL";
#else
  c.why_avx512 = avx512_cpu ? "this build has no AVX-512 kernels (built for x86-64-v3, e.g. ARKERN_NATIVE=0)"
                            : "the CPU lacks AVX-512 F/DQ/BW/VL (and this build has no AVX-512 kernels)";
#endif
#if ARKERN_HAVE_AMX
  const bool amx_cpu = (d7 & (1u << 24)) && (d7 & (1u << 22));
  if (!amx_cpu) {
    c.why_amx = "the CPU lacks AMX-TILE / AMX-BF16";
  } else if ((xcr & (3ull << 17)) != (3ull << 17)) {
    c.why_amx = "the OS does not enable the AMX tile state (XCR0 bits 17-18)";
  } else {
    c.why_amx = request_tile_permission();
  }
  c.amx = c.why_amx.empty();
#else
  c.why_amx = "this build has no AMX kernels (built with ARKERN_NO_AMX, or by a compiler older than GCC 11 / clang 12)";
#endif
#else
  c.why_avx2 = c.why_avx512 = c.why_amx = "not an x86-64 machine";
#endif
  return c;
}

const Cpu& cpu() {
  static const Cpu c = detect();
  return c;
}

std::mutex& record_mutex() {
  static std::mutex m;
  return m;
}

std::map<std::string, int>& records() {
  static std::map<std::string, int> r;
  return r;
}

Isa parse(const std::string& s, const char* what) {
  for (int i = 0; i < kNumIsa; ++i)
    if (s == name(static_cast<Isa>(i))) return static_cast<Isa>(i);
  TORCH_CHECK(false, what, " must be one of avx2, avx512, amx, got '", s, "'");
}

void force(Isa isa, const char* what) {
  const std::string& why = unavailable_reason(isa);
  TORCH_CHECK(why.empty(), what, "=", name(isa), ": this instruction set is unavailable here: ", why);
  g_selected.store(static_cast<int>(isa));
}

Isa best() {
  for (int i = kNumIsa - 1; i > 0; --i)
    if (unavailable_reason(static_cast<Isa>(i)).empty()) return static_cast<Isa>(i);
  return Isa::avx2;  // the portable paths run anywhere this extension loads
}

}  // namespace

const char* name(Isa isa) {
  static const char* const names[kNumIsa] = {"avx2", "avx512", "amx"};
  return names[static_cast<int>(isa)];
}

const std::string& unavailable_reason(Isa isa) {
  switch (isa) {
    case Isa::avx2: return cpu().why_avx2;
    case Isa::avx512: return cpu().why_avx512;
    default: return cpu().why_amx;
  }
}

Isa select_first() {
  static std::mutex m;
  std::lock_guard<std::mutex> lock(m);
  if (g_selected.load() < 0) {
    const char* env = std::getenv("ARKERN_ISA");
    if (env != nullptr && *env != '\0') {
      force(parse(env, "ARKERN_ISA"), "ARKERN_ISA");
    } else {
      g_selected.store(static_cast<int>(best()));
    }
  }
  return static_cast<Isa>(g_selected.load());
}

void record(const char* op, Isa isa) {
  std::lock_guard<std::mutex> lock(record_mutex());
  records()[op] = static_cast<int>(isa);
}

namespace {

// [selected level, then per level (avx2, avx512, amx) "" if available else why not]
std::vector<std::string> cpu_isa_status() {
  std::vector<std::string> out{name(selected())};
  for (int i = 0; i < kNumIsa; ++i) out.push_back(unavailable_reason(static_cast<Isa>(i)));
  return out;
}

// Forces a level ("" restores the default: ARKERN_ISA, else the best available); returns the level now in use.
std::string set_cpu_isa(const std::string& isa) {
  if (isa.empty()) {
    g_selected.store(-1);
  } else {
    force(parse(isa, "set_cpu_isa: isa"), "set_cpu_isa");
  }
  return name(selected());
}

// The level the last call of `op` ran its matrix products on ("" before any call).
std::string last_cpu_isa(const std::string& op) {
  std::lock_guard<std::mutex> lock(record_mutex());
  const auto it = records().find(op);
  return it == records().end() ? "" : name(static_cast<Isa>(it->second));
}

}  // namespace
}  // namespace arkern_isa

// Ops without tensor arguments cannot be dispatched by device: catch-all kernels, defined here (they exist
// only with the compiled extension; arkern.backends reports their absence).
TORCH_LIBRARY_FRAGMENT(arkern, m) {
  m.def("cpu_isa_status() -> str[]", &arkern_isa::cpu_isa_status);
  m.def("set_cpu_isa(str isa) -> str", &arkern_isa::set_cpu_isa);
  m.def("last_cpu_isa(str op) -> str", &arkern_isa::last_cpu_isa);
}
