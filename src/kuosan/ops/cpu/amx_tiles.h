// AMX tile pieces shared by conv_weight_grad.cpp and attention.cpp: the tile configuration and
// transposes of 16-bit (32 x 32) and 32-bit (16 x 16) values in AVX-512 registers.
#pragma once
#include <c10/util/BFloat16.h>

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

// rows i and i + D (i with bit D clear) exchange blocks of B 32-bit lanes: the upper B-block of
// row i with the lower B-block of row i + D (a two-source permute each); a stage of the transposes below
template <int B, int D, int Rows>
inline void swap_lane_blocks(__m512i r[Rows]) {
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
  for (int i = 0; i < Rows; ++i)
    if (!(i & D)) {
      const __m512i u = r[i], v = r[i + D];
      r[i] = _mm512_permutex2var_epi32(u, il, v);
      r[i + D] = _mm512_permutex2var_epi32(u, ih, v);
    }
}

// 16 x 16 transpose of 32-bit values: row i of r becomes column i
inline void transpose16x32(__m512i r[16]) {
  swap_lane_blocks<8, 8, 16>(r);
  swap_lane_blocks<4, 4, 16>(r);
  swap_lane_blocks<2, 2, 16>(r);
  swap_lane_blocks<1, 1, 16>(r);
}

// 32 x 32 transpose of 16-bit values: row i of r becomes column i. Block swaps of 16, 8, 4 and 2
// lanes (between rows i and i + 2B, as each row holds 16 pairs) move whole 32-bit pairs; the swap
// of single lanes is a shift and a blend.
inline void transpose32(__m512i r[32]) {
  swap_lane_blocks<8, 16, 32>(r);
  swap_lane_blocks<4, 8, 32>(r);
  swap_lane_blocks<2, 4, 32>(r);
  swap_lane_blocks<1, 2, 32>(r);
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
