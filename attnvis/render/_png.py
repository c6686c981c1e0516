"""Huffman-only deflate for PNG scanlines of photographic content (numba).

After PNG's "Sub" filter, a photograph (or an overlay blended with one) is
a stream of small, noisy residuals: LZ77 finds few matches in it, yet that
search is where deflate spends its time. A Huffman code fitted to the
residuals' histogram and nothing else (zlib's ``Z_HUFFMAN_ONLY``) gives
files as small as deflate level 1 at a fraction of the CPU. Smooth images
(heatmaps: long runs of equal residuals) are left to a real LZ77 encoder;
:mod:`attnvis.render.writers` decides which, from :func:`repeat_share`.

Output is standard deflate (RFC 1951): one final dynamic-Huffman block that
every inflater reads (the tests decode with Python's ``zlib``, OpenCV and
Pillow). The code is built from a sample of every ``stride``-th byte with
add-one smoothing, so every byte value has a code; bytes are coded two at a
time through a 65,536-entry table of pair codes.

Kernels are compiled on first use (``cache=True``) and release the GIL.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from attnvis.render._loads import scalar_load, scalar_store

_END = 256  # end-of-block symbol; literals are 0..255, no lengths or distances are used
_CL_ORDER = np.array([16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15], np.int64)
_SAMPLES = 1 << 16  # bytes sampled for the histogram (at least)
_HEADER_WORDS = 96  # bound on the block's header and end (< 3,000 bits)


@njit(cache=True, nogil=True)
def sub_filter(rows, out):
    """PNG's "Sub" filter: rows [H, 3W] uint8 RGB → out [H, 1 + 3W]: filter type 1, then each byte
    minus the same channel of the pixel to its left, modulo 256 (2.5x faster than the NumPy slices)."""
    for y in range(rows.shape[0]):
        src, dst = rows[y], out[y]
        dst[0] = 1
        for x in range(min(3, src.shape[0])):
            dst[1 + x] = src[x]
        for x in range(np.uint64(3), np.uint64(src.shape[0])):  # unsigned: no negative-index fix-ups
            dst[x + np.uint64(1)] = src[x] - src[x - np.uint64(3)]  # the uint8 store wraps


def words_needed(n: int) -> int:
    """Length of the uint32 ``words`` scratch that :func:`deflate_huffman` needs for n bytes (15 bits a byte at most)."""
    return (n * 15) // 32 + _HEADER_WORDS


@njit(cache=True, nogil=True)
def _sampled_histogram(data):
    """Counts [257] of every ``stride``-th byte plus one (so no byte value is left without a code)."""
    n = data.shape[0]
    stride = max(1, n // _SAMPLES)
    hist = np.ones(_END + 1, np.int64)
    for i in range(0, n, stride):
        hist[scalar_load(data, i)] += 1
    return hist


@njit(cache=True, nogil=True)
def repeat_share(data, distance):
    """Share of (sampled) bytes equal to the byte ``distance`` before them.

    With PNG's "Sub" filter and distance = one pixel, this is how much of an
    image repeats its neighbour's residual: most of a heatmap (flat colours,
    steady gradients), little of a photograph. Repeats are what LZ77 matches
    exploit and a Huffman code alone cannot.
    """
    n = data.shape[0]
    stride = max(1, n // _SAMPLES)
    same = total = 0
    for i in range(distance, n, stride):
        same += scalar_load(data, i) == scalar_load(data, i - distance)
        total += 1
    return same / total if total else 1.0


@njit(cache=True, nogil=True)
def _huffman_lengths(freq, max_bits, lengths):
    """Code lengths (at most max_bits) of a Huffman code for freq; unused symbols get 0.

    Two-queue construction over the symbols sorted by frequency, then lengths
    over the limit are folded in as in zlib/miniz (Kraft sum restored by
    lengthening the deepest shorter codes). A lone symbol gets length 1.
    """
    lengths[:] = 0
    used = np.nonzero(freq)[0]
    m = used.shape[0]
    if m == 0:
        return
    if m == 1:
        lengths[used[0]] = 1
        return
    order = used[np.argsort(freq[used], kind="mergesort")]  # ascending weight
    weight = np.empty(2 * m - 1, np.int64)
    parent = np.empty(2 * m - 1, np.int64)
    weight[:m] = freq[order]
    leaf, node, made = 0, m, m
    pair = np.empty(2, np.int64)
    for _ in range(m - 1):
        for k in range(2):  # take the lighter head of the leaf queue and the node queue
            if leaf < m and (node >= made or weight[leaf] <= weight[node]):
                pair[k] = leaf
                leaf += 1
            else:
                pair[k] = node
                node += 1
        weight[made] = weight[pair[0]] + weight[pair[1]]
        parent[pair[0]] = parent[pair[1]] = made
        made += 1
    depth = np.zeros(2 * m - 1, np.int64)
    for v in range(2 * m - 3, -1, -1):  # root is the last node, depth 0
        depth[v] = depth[parent[v]] + 1
    count = np.zeros(max(m, max_bits + 1), np.int64)  # codes per length (depth < m)
    for v in range(m):
        count[depth[v]] += 1
    _limit_lengths(count, max_bits)
    v = 0  # lightest symbols take the longest codes
    for bits in range(max_bits, 0, -1):
        for _ in range(count[bits]):
            lengths[order[v]] = bits
            v += 1


@njit(cache=True, nogil=True)
def _limit_lengths(count, max_bits):
    """Fold codes longer than max_bits into max_bits and restore the Kraft sum (in place)."""
    for bits in range(max_bits + 1, count.shape[0]):
        count[max_bits] += count[bits]
        count[bits] = 0
    total = 0
    for bits in range(1, max_bits + 1):
        total += count[bits] << (max_bits - bits)
    while total > (1 << max_bits):
        count[max_bits] -= 1
        for bits in range(max_bits - 1, 0, -1):
            if count[bits] > 0:
                count[bits] -= 1
                count[bits + 1] += 2
                break
        total -= 1


@njit(cache=True, nogil=True)
def _canonical_codes(lengths):
    """Canonical Huffman codes for lengths, bit-reversed (deflate sends codes MSB first into an LSB-first stream)."""
    count = np.zeros(16, np.int64)
    for length in lengths:
        count[length] += 1
    count[0] = 0
    start = np.zeros(16, np.int64)
    code = 0
    for bits in range(1, 16):
        code = (code + count[bits - 1]) << 1
        start[bits] = code
    codes = np.zeros(lengths.shape[0], np.int64)
    for s in range(lengths.shape[0]):
        bits = lengths[s]
        if bits:
            c, rev = start[bits], 0
            start[bits] += 1
            for _ in range(bits):
                rev = (rev << 1) | (c & 1)
                c >>= 1
            codes[s] = rev
    return codes


@njit(cache=True, nogil=True)
def _length_code_symbols(lengths, symbols):
    """Run-length code the code lengths (RFC 1951, 3.2.7): symbols [k, 2] (symbol, repeat extra); returns k.

    Zero runs use 17/18; other lengths are sent one by one (they rarely repeat).
    """
    k, i, n = 0, 0, lengths.shape[0]
    while i < n:
        if lengths[i] == 0:
            run = 1
            while i + run < n and lengths[i + run] == 0 and run < 138:
                run += 1
            if run >= 11:
                symbols[k, 0], symbols[k, 1] = 18, run - 11
            elif run >= 3:
                symbols[k, 0], symbols[k, 1] = 17, run - 3
            else:
                symbols[k, 0], symbols[k, 1], run = 0, 0, 1
            i += run
        else:
            symbols[k, 0], symbols[k, 1] = lengths[i], 0
            i += 1
        k += 1
    return k


@njit(cache=True, nogil=True)
def _write_header(words, state, final, lit_lengths, dist_lengths):
    """Block header: BFINAL, dynamic type, then both code-length tables (coded with the code-length code)."""
    nlit = lit_lengths.shape[0]
    all_lengths = np.concatenate((lit_lengths[:nlit], dist_lengths))
    symbols = np.empty((all_lengths.shape[0], 2), np.int64)
    k = _length_code_symbols(all_lengths, symbols)
    cl_freq = np.zeros(19, np.int64)
    for j in range(k):
        cl_freq[symbols[j, 0]] += 1
    if np.count_nonzero(cl_freq) < 2:  # inflaters reject a one-code code-length code
        cl_freq[1 if cl_freq[0] else 0] = 1
    cl_lengths = np.zeros(19, np.int64)
    _huffman_lengths(cl_freq, 7, cl_lengths)
    cl_codes = _canonical_codes(cl_lengths)
    ncl = 19
    while ncl > 4 and cl_lengths[_CL_ORDER[ncl - 1]] == 0:
        ncl -= 1
    _put(words, state, final, 1)
    _put(words, state, 2, 2)  # BTYPE 10: dynamic Huffman
    _put(words, state, nlit - 257, 5)
    _put(words, state, dist_lengths.shape[0] - 1, 5)
    _put(words, state, ncl - 4, 4)
    for j in range(ncl):
        _put(words, state, cl_lengths[_CL_ORDER[j]], 3)
    for j in range(k):
        s = symbols[j, 0]
        _put(words, state, cl_codes[s], cl_lengths[s])
        if s >= 16:
            _put(words, state, symbols[j, 1], 3 if s == 17 else 7)  # zero runs: 17 or 18


@njit(cache=True, nogil=True)
def _put(words, state, value, nbits):
    """Append nbits (<= 32) of value; state = [bit buffer, bits in it (< 32), next word].

    The partial word is always stored too, so the stream can end at any bit.
    """
    acc = state[0] | (np.int64(value) << state[1])
    filled = state[1] + nbits
    pos = state[2]
    if filled >= 32:
        words[pos] = acc & 0xFFFFFFFF
        pos += 1
        acc >>= 32
        filled -= 32
    words[pos] = acc & 0xFFFFFFFF
    state[0], state[1], state[2] = acc, filled, pos


@njit(cache=True, nogil=True)
def _pair_codes(codes, nbits):
    """Codes of every byte pair (first byte in the low bits: it is sent first): uint32 [65536], uint8 [65536].

    Indexed by the pair read as a little-endian uint16; at most 30 bits each.
    """
    pair_codes = np.empty(1 << 16, np.uint32)
    pair_bits = np.empty(1 << 16, np.uint8)
    for second in range(256):
        for first in range(256):
            pair = first | (second << 8)
            pair_codes[pair] = codes[first] | (codes[second] << nbits[first])
            pair_bits[pair] = nbits[first] + nbits[second]
    return pair_codes, pair_bits


@njit(cache=True, nogil=True)
def _emit_pairs(pairs, pair_codes, pair_bits, words, state):
    """Append the codes of pairs [m] uint16 (two bytes each) to the stream, one 32-bit word at a time.

    Branch-free: the current word is stored on every step and the position
    advances when it is full. One lookup per two bytes halves the work of
    the loop, which is bound by its instruction count.
    """
    acc, filled, pos = state[0], state[1], state[2]
    for i in range(pairs.shape[0]):
        pair = scalar_load(pairs, i)
        acc |= np.int64(scalar_load(pair_codes, pair)) << filled  # filled < 32, codes < 2^30: acc < 2^62
        filled += scalar_load(pair_bits, pair)
        scalar_store(words, pos, np.uint32(acc & 0xFFFFFFFF))
        pos += filled >> 5  # 0 or 1
        acc >>= filled & 32
        filled &= 31
    state[0], state[1], state[2] = acc, filled, pos


@njit(cache=True, nogil=True)
def deflate_huffman(data, words):
    """Deflate data [n] uint8 with literals only, in one block; words [words_needed(n)] uint32 is scratch.

    Returns the number of bytes of the raw deflate stream (no zlib header),
    which starts at ``words.view(np.uint8)[0]``.
    """
    n = data.shape[0]
    lengths = np.zeros(_END + 1, np.int64)
    _huffman_lengths(_sampled_histogram(data), 15, lengths)
    codes = _canonical_codes(lengths)
    state = np.zeros(3, np.int64)  # bit buffer, bits in it, next word
    _write_header(words, state, True, lengths, np.ones(2, np.int64))  # two unused 1-bit distance codes, as zlib
    pair_codes, pair_bits = _pair_codes(codes[:_END].astype(np.uint32), lengths[:_END].astype(np.uint8))
    even = n - n % 2
    _emit_pairs(data[:even].view(np.uint16), pair_codes, pair_bits, words, state)
    if n % 2:
        _put(words, state, codes[data[n - 1]], lengths[data[n - 1]])
    _put(words, state, codes[_END], lengths[_END])
    _put(words, state, 0, (8 - state[1] % 8) % 8)  # pad the last byte
    return 4 * state[2] + state[1] // 8
