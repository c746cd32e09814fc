"""Triton kernels of the planted convolution (design and launchers: triton_conv.py).

Imported only when the triton backend first runs: importing plantops never imports triton.
"""

import os

import triton
import triton.language as tl

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def configs(*blocks):
    if _INTERPRET:  # every config would run once per call under the interpreter
        blocks = blocks[:1]
    return [triton.Config(dict(zip(("BLOCK_M", "BLOCK_N", "BLOCK_K"), b)),
                          num_warps=4 if b[0] * b[1] <= 4096 else 8, num_stages=3)
            for b in blocks]

conv_configs = configs((16, 16, 16), (64, 32, 32), (128, 32, 32), (128, 64, 32),
                       (64, 64, 64), (128, 128, 32), (256, 64, 32))

@triton.jit
def _weight_tile(w_frozen, w_in, w_out, o, c, tap, O_f, I_f, I_p, KK, mask):
    """The assembled weight at (o[:, None] or o[None, :], c, tap), from its block."""
    in_frozen = (o < O_f) & (c < I_f) & mask
    in_in = (o < O_f) & (c >= I_f) & mask
    in_out = (o >= O_f) & mask
    C = I_f + I_p
    w = tl.load(w_frozen + (o * I_f + c).to(tl.int64) * KK + tap, mask=in_frozen, other=0.0)
    w += tl.load(w_in + (o * I_p + (c - I_f)).to(tl.int64) * KK + tap, mask=in_in, other=0.0)
    w += tl.load(w_out + ((o - O_f) * C + c).to(tl.int64) * KK + tap, mask=in_out, other=0.0)
    return w

@triton.autotune(configs=conv_configs, key=["N", "C", "O", "H", "W", "KH", "KW"])
@triton.jit
def forward_kernel(x, w_frozen, w_in, w_out, bias, out,
                   N, C, O, H, W, OH, OW, O_f, I_f, I_p,
                   KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
                   PH: tl.constexpr, PW: tl.constexpr, HAS_BIAS: tl.constexpr,
                   PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr):
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    pix = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)          # output pixel index
    och = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)          # output channel
    pix_ok, och_ok = pix < N * OH * OW, och < O
    n, oy, ox = pix // (OH * OW), (pix // OW) % OH, pix % OW
    KK: tl.constexpr = KH * KW
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, C * KK, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        c, tap = k // KK, k % KK
        iy = oy[:, None] * SH + (tap // KW)[None, :] - PH
        ix = ox[:, None] * SW + (tap % KW)[None, :] - PW
        x_ok = (pix_ok[:, None] & (k < C * KK)[None, :] & (iy >= 0) & (iy < H)
                & (ix >= 0) & (ix < W))
        x_off = ((n[:, None] * C + c[None, :]).to(tl.int64) * H + iy) * W + ix
        a = tl.load(x + x_off, mask=x_ok, other=0.0)
        b = _weight_tile(w_frozen, w_in, w_out, och[None, :], c[:, None], tap[:, None],
                         O_f, I_f, I_p, KK, (k < C * KK)[:, None] & och_ok[None, :])
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias + och, mask=och_ok, other=0.0).to(tl.float32)[None, :]
    out_off = ((n[:, None] * O + och[None, :]).to(tl.int64) * OH + oy[:, None]) * OW + ox[:, None]
    tl.store(out + out_off, acc.to(out.dtype.element_ty), mask=pix_ok[:, None] & och_ok[None, :])

@triton.autotune(configs=conv_configs, key=["N", "C", "O", "H", "W", "KH", "KW"])
@triton.jit
def input_grad_kernel(grad_out, w_frozen, w_in, w_out, grad_x,
                      N, C, O, H, W, OH, OW, O_f, I_f, I_p, c_begin, NC,
                      KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr,
                      SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
                      PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    pix = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)          # input pixel index
    ch = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)           # channel within the range
    pix_ok, ch_ok = pix < N * H * W, ch < NC
    n, iy, ix = pix // (H * W), (pix // W) % H, pix % W
    KK: tl.constexpr = KH * KW
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, O * KK, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        o, tap = k // KK, k % KK
        ty = iy[:, None] + PH - (tap // KW)[None, :]
        tx = ix[:, None] + PW - (tap % KW)[None, :]
        oy, ox = ty // SH, tx // SW
        g_ok = (pix_ok[:, None] & (k < O * KK)[None, :] & (ty >= 0) & (tx >= 0)
                & (ty % SH == 0) & (tx % SW == 0) & (oy < OH) & (ox < OW))
        g_off = ((n[:, None] * O + o[None, :]).to(tl.int64) * OH + oy) * OW + ox
        a = tl.load(grad_out + g_off, mask=g_ok, other=0.0)
        b = _weight_tile(w_frozen, w_in, w_out, o[:, None], c_begin + ch[None, :],
                         tap[:, None], O_f, I_f, I_p, KK, (k < O * KK)[:, None] & ch_ok[None, :])
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    gx_off = ((n[:, None] * NC + ch[None, :]).to(tl.int64) * H + iy[:, None]) * W + ix[:, None]
    tl.store(grad_x + gx_off, acc.to(grad_x.dtype.element_ty),
             mask=pix_ok[:, None] & ch_ok[None, :])

@triton.jit
def weight_grad_kernel(grad_out, x, partial,
                       N, C, O, H, W, OH, OW, o_begin, NO, c_begin, NCK, PIX_PER_SPLIT,
                       KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr,
                       SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
                       PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m, pid_n, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    row = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)          # filter within the block
    col = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)          # (channel, tap) within the block
    row_ok, col_ok = row < NO, col < NCK
    KK: tl.constexpr = KH * KW
    c, tap = c_begin + col // KK, col % KK
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    start = split * PIX_PER_SPLIT
    for p0 in range(0, PIX_PER_SPLIT, BLOCK_K):
        pix = start + p0 + tl.arange(0, BLOCK_K)
        pix_ok = (pix < N * OH * OW) & (p0 + tl.arange(0, BLOCK_K) < PIX_PER_SPLIT)
        n, oy, ox = pix // (OH * OW), (pix // OW) % OH, pix % OW
        g_off = ((n[None, :] * O + o_begin + row[:, None]).to(tl.int64) * OH + oy[None, :]) * OW + ox[None, :]
        a = tl.load(grad_out + g_off, mask=row_ok[:, None] & pix_ok[None, :], other=0.0)
        iy = oy[:, None] * SH + (tap // KW)[None, :] - PH
        ix = ox[:, None] * SW + (tap % KW)[None, :] - PW
        x_ok = pix_ok[:, None] & col_ok[None, :] & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
        x_off = ((n[:, None] * C + c[None, :]).to(tl.int64) * H + iy) * W + ix
        b = tl.load(x + x_off, mask=x_ok, other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    p_off = (split * NO + row[:, None]).to(tl.int64) * NCK + col[None, :]
    tl.store(partial + p_off, acc, mask=row_ok[:, None] & col_ok[None, :])

