"""`tf.random.experimental.index_shuffle` in plain numpy.

The order of a training stream is a stateless permutation of (seed, epoch): image `i` of epoch `e`
sits at position `index_shuffle(i, [seed, e], n - 1)`. TensorFlow computes it in
pipeline.BatchPlan; this module computes the same numbers without TensorFlow, so a machine with
only JAX (or only numpy) reads the training stream in the very same order. tests/test_shuffle.py
checks it bit-exact against TensorFlow.

What TensorFlow does, reproduced here:
  * The Python wrapper prepends a constant word to the [2] seed, and the kernel casts each of the
    three words to uint32: the key is (498247692, low 32 bits of seed[0], low 32 bits of seed[1]).
    No Philox key derivation is involved, and the high 32 bits of an int64 seed are ignored.
  * The permutation is a Simon-like Feistel cipher on a block of B bits (B even, at least 16,
    enough for max_index), 4 rounds, whose round keys are the key words cut to B/2 bits. Values
    the cipher sends above max_index are encrypted again until they land in [0, max_index]
    (cycle walking).
"""
import math
from functools import lru_cache

import numpy as np

SEED_PAD = 498247692  # the word TF's wrapper puts in front of the user's [2] seed
MIN_BLOCK = 16  # TF never uses a smaller block
ROUNDS = 4  # what the wrapper passes to the RandomIndexShuffle op
KEY_C = 0xFFFFFFFC  # Simon's key-schedule constant
KEY_Z = 0x7369F885192C0EF5  # Simon's key-schedule bit sequence


def block_bits(max_index):
    """The cipher's block size for `max_index`. Computed through a double, as TF's kernel does
    (ceil of log2), so it agrees with TF also where that rounds (e.g. max_index = 2**16 gets 16)."""
    bits = math.ceil(math.log2(float(max_index)))
    return min(max(bits + bits % 2, MIN_BLOCK), 64)


def rotl(x, r, w):
    """Rotate the w-bit words in `x` left by r (0 < r <= w)."""
    return ((x << r) | (x >> (w - r))) & ((1 << w) - 1)


def rotr(x, r, w):
    return ((x >> r) | (x << (w - r))) & ((1 << w) - 1)


def round_keys(key, w, rounds=ROUNDS):
    """Simon's key schedule on w-bit words, starting from the three key words cut to w bits."""
    mask = (1 << w) - 1
    keys = [k & mask for k in key]
    z = KEY_Z & mask  # a w-bit word in TF: bits above w never shift down into bit 0
    for i in range(3, rounds):
        keys.append((KEY_C & mask) ^ (z & 1) ^ keys[i - 3] ^ rotr(keys[i - 1], 3, w) ^ rotr(keys[i - 1], 4, w))
        z >>= 1
    return keys


def simon_f(x, w):
    return (rotl(x, 1, w) & rotl(x, 8, w)) ^ rotl(x, 2, w)


def encrypt(values, keys, w):
    """One pass of the cipher over uint64 `values` (each taken mod 2**(2w), as TF does)."""
    w64 = np.uint64(w)
    mask = np.uint64((1 << w) - 1)
    left, right = (values >> w64) & mask, values & mask
    for k1, k2 in zip(keys[0::2], keys[1::2]):
        left = left ^ simon_f(right, w64) ^ np.uint64(k1)
        right = right ^ simon_f(left, w64) ^ np.uint64(k2)
    return (left << w64) | right


@lru_cache(maxsize=8)
def small_block_table(key, max_index, rounds):
    """For the 16-bit block: where a walk starting at each of the 65536 values ends.

    With a small max_index (a 10-image set still gets a 65536-value block) a walk can take
    thousands of steps, so instead the whole block is encrypted once and the walks are resolved
    together by pointer jumping: `ptr[y]` is a value further along y's walk, `done[y]` says it is
    the walk's end; following `ptr` through itself doubles the distance covered per step.
    Cached because a training run asks for the same (seed, epoch) at every step of an epoch."""
    w = MIN_BLOCK // 2
    ptr = encrypt(np.arange(1 << MIN_BLOCK, dtype=np.uint64), round_keys(key, w, rounds), w)
    done = ptr <= np.uint64(max_index)
    # Walks from values <= max_index end within log2(65536) doublings. Walks from values on
    # cycles above max_index never end (TF would loop forever); no valid index starts there.
    for _ in range(MIN_BLOCK + 1):
        if done.all():
            break
        ptr, done = np.where(done, ptr, ptr[ptr]), done | done[ptr]
    return ptr


def walk(values, keys, w, max_index):
    """Cycle walking: re-encrypt whatever lands above max_index until all are in range."""
    out = encrypt(values, keys, w)
    todo = np.flatnonzero(out > np.uint64(max_index))
    while todo.size:
        out[todo] = encrypt(out[todo], keys, w)
        todo = todo[out[todo] > np.uint64(max_index)]
    return out


def key_words(seed):
    """The op's three uint32 key words from the user's [2] seed (what TF's wrapper and kernel do)."""
    s0, s1 = (int(s) for s in np.asarray(seed).reshape(-1))
    return (SEED_PAD & 0xFFFFFFFF, s0 & 0xFFFFFFFF, s1 & 0xFFFFFFFF)


def index_shuffle(index, seed, max_index, rounds=ROUNDS):
    """Where `index` goes in the permutation of [0, max_index] that `seed` picks: equal to
    tf.random.experimental.index_shuffle(index, seed, max_index) for int64 inputs.

    index: int or integer array with values in [0, max_index]; seed: two ints (any int64, as a
    list, tuple or array of shape [2]); max_index: a non-negative int. Returns int64 of index's shape."""
    idx = np.asarray(index)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"index must be integer, got {idx.dtype}")
    max_index = int(max_index)
    if max_index < 0:
        raise ValueError(f"max_index must be >= 0, got {max_index}")
    if np.asarray(seed).size != 2:
        raise ValueError(f"seed must hold 2 ints, got shape {np.asarray(seed).shape}")
    if idx.size and (idx.min() < 0 or int(idx.max()) > max_index):
        raise ValueError(f"index must lie in [0, {max_index}]")
    flat = idx.astype(np.uint64).reshape(-1)
    if max_index == 0:
        out = np.zeros_like(flat)
    else:
        key, bits = key_words(seed), block_bits(max_index)
        if bits == MIN_BLOCK:
            # TF's cipher reads its input mod 2**bits (max_index = 2**16 gets there), so the table does
            out = small_block_table(key, max_index, rounds)[flat & np.uint64((1 << bits) - 1)]
        else:
            out = walk(flat, round_keys(key, bits // 2, rounds), bits // 2, max_index)
    out = out.astype(np.int64).reshape(idx.shape)
    return out[()] if out.ndim == 0 else out
