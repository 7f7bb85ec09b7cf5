// AMX tile pieces shared by conv_weight_grad.cpp and attention.cpp: the tile configuration and a
// 32 x 32 transpose of 16-bit values in AVX-512 registers.
#pragma once
#include <torch/extension.h>

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BW__) && defined(__AVX512BF16__)
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#define KUOSAN_AMX 1
#endif

namespace kuosan_amx {
using bf16 = at::BFloat16;
#ifdef KUOSAN_AMX
struct TileConfig {  // the LDTILECFG layout (palette 1)
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// 32 x 32 transpose of 16-bit values: row i of r becomes column i. Block swaps of 16, 8, 4 and 2
// lanes move whole 32-bit pairs (a two-source permute each); the swap of single lanes is a shift
// and a blend.
template <int B>
inline void transpose_stage(__m512i r[32]) {  // swap blocks of B 32-bit units between rows i and i + 2B
  alignas(64) static constexpr int32_t lo[16] = {
#define L(j) ((j) & B ? 16 + (j) - B : (j))
      L(0), L(1), L(2), L(3), L(4), L(5), L(6), L(7), L(8), L(9), L(10), L(11), L(12), L(13), L(14), L(15)};
#undef L
  alignas(64) static constexpr int32_t hi[16] = {
#define L(j) ((j) & B ? 16 + (j) : (j) + B)
      L(0), L(1), L(2), L(3), L(4), L(5), L(6), L(7), L(8), L(9), L(10), L(11), L(12), L(13), L(14), L(15)};
#undef L
  const __m512i il = _mm512_load_si512(lo), ih = _mm512_load_si512(hi);
#pragma GCC unroll 32
  for (int i = 0; i < 32; ++i)
    if (!(i & 2 * B)) {
      const __m512i u = r[i], v = r[i + 2 * B];
      r[i] = _mm512_permutex2var_epi32(u, il, v);
      r[i + 2 * B] = _mm512_permutex2var_epi32(u, ih, v);
    }
}
inline void transpose32(__m512i r[32]) {
  transpose_stage<8>(r);
  transpose_stage<4>(r);
  transpose_stage<2>(r);
  transpose_stage<1>(r);
#pragma GCC unroll 16
  for (int i = 0; i < 32; i += 2) {
    const __m512i u = r[i], v = r[i + 1];
    r[i] = _mm512_mask_blend_epi16(0xAAAAAAAA, u, _mm512_slli_epi32(v, 16));
    r[i + 1] = _mm512_mask_blend_epi16(0xAAAAAAAA, _mm512_srli_epi32(u, 16), v);
  }
}

// a tile configuration of eight 16 x 64-byte tiles (16 rows of 32 bfloat16 or 16 float32), loaded
// on the calling thread
inline void load_tile_config() {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) cfg.rows[t] = 16, cfg.colsb[t] = 64;
  _tile_loadconfig(&cfg);
}
#endif
}  // namespace kuosan_amx
