// Run-time choice of the instruction set the fused decode kernels use (csrc/cpu/isa.cpp).
//
// Three levels, each a superset of the one before:
// - avx2:   the portable code paths of the kernels (an ARKERN_NATIVE=0 build, -march=x86-64-v3, has only
//           these). In a -march=native build they are compiled for that machine, so the compiler may still
//           use wider instructions in them; the hand-written AVX-512 kernels are not used.
// - avx512: the hand-written AVX-512 kernels (decode_matvec.h); present only in builds whose target has
//           AVX-512 (the default -march=native build on an AVX-512 machine).
// - amx:    avx512 plus AMX-BF16 tile kernels (amx.h) for the batched matrix products of bfloat16 models;
//           compiled with function target attributes in every x86-64 build whose compiler knows AMX, and
//           usable when the CPU has amx_tile + amx_bf16 and the OS grants the tile state (Linux:
//           arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA), asked once per process).
//
// The default is the best level available; ARKERN_ISA=avx2|avx512|amx (read at the first use) or
// arkern.backends.set_cpu_isa forces one, and a forced level that is unavailable is an error naming why.
#pragma once

#include <atomic>
#include <string>

namespace arkern_isa {

enum class Isa : int { avx2 = 0, avx512 = 1, amx = 2 };
constexpr int kNumIsa = 3;

const char* name(Isa isa);

// Why `isa` cannot be used here ("" when it can).
const std::string& unavailable_reason(Isa isa);

// The level chosen so far (-1 before the first use); set only by isa.cpp.
extern std::atomic<int> g_selected;
Isa select_first();

// The level the kernels use now (the forced one, else the best available). Throws (c10::Error) when
// ARKERN_ISA names an unavailable or unknown level. One relaxed load after the first call.
inline Isa selected() {
  const int s = g_selected.load(std::memory_order_relaxed);
  return s >= 0 ? static_cast<Isa>(s) : select_first();
}

// True when the kernels may use AMX tiles (selected() == amx).
inline bool use_amx() { return selected() == Isa::amx; }

// True when the kernels may use their hand-written AVX-512 code (selected() >= avx512).
inline bool use_avx512() { return selected() != Isa::avx2; }

// Records which level the last call of `op` ran its matrix products on (for arkern.backends.last_cpu_isa).
void record(const char* op, Isa isa);

}  // namespace arkern_isa
