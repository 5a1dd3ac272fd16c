"""Whole-word phrase look-up over normalised caption batches, vectorised with numpy.

The ``phrase`` and ``bag`` modes look for word sequences (a concept's surface forms) in captions that are
already normalised (``helpers.text.normalise``): words of letters and digits separated by single spaces,
captions separated by the separator ``SEP`` (``" w w \\0 w w "``). ``PhraseIndex`` finds every occurrence
of every pattern as a contiguous run of whole words, exactly, in a few numpy passes over the batch:

1. **Words.** On the batch's UTF-8 bytes (``normalise.normalise_utf8``) every space is a boundary; each
   maximal run of other bytes is a word (a multi-byte character never holds a space or NUL byte), and
   the separator is a word of its own (in no pattern, so no phrase runs from one caption into the next).
   A word's caption is the number of separators before it.
2. **Word ids.** A word is looked up by its exact UTF-8 bytes, read as 8-byte chunks through a strided
   view of the (zero-padded) buffer and masked to the word's length. A word of one chunk *is* its key (exact); a
   longer one is looked up by a mix of its chunks, then all its chunks and its length are compared with
   those of the vocabulary word found, so a collision of mixes can never make a false match.
3. **Phrases.** A trie over word ids is walked from every word position at once: one step per phrase
   length, over the positions still on a path of the trie.

The look-ups (word -> id, trie state + word -> child) go through ``_HashMap``, an open-addressing table
probed for all keys at once.

The result equals finding the ``" w1 w2 ... "`` patterns in the joined text (what an Aho-Corasick
automaton over the same space-padded patterns reports), which ``tests/test_wordscan.py`` checks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

_EMPTY = np.zeros(0, dtype=np.int64)
_MIXES = tuple(
    np.uint64(m) for m in (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9)
)  # odd: bijections modulo 2**64
# _MASKS[k]: the low k bytes of a little-endian uint64 (k = 0..8)
_MASKS = np.array([(1 << (8 * k)) - 1 for k in range(8)] + [(1 << 64) - 1], dtype=np.uint64)
_NONE = np.uint64(2**64 - 1)  # -1 as uint64: "no value"
_FIRST_MASKS = np.append(_MASKS, np.uint64(0))  # by length clipped to 9: a word of more than 8 bytes -> 0
PAD_BYTES = 8  # zero bytes a buffer needs past its last character (``padded``)


def padded(data: np.ndarray) -> np.ndarray:
    """``data`` (uint8) followed by ``PAD_BYTES`` zero bytes, for ``_windows``."""
    return np.concatenate([data, np.zeros(PAD_BYTES, dtype=np.uint8)])


def _windows(buffer: np.ndarray) -> np.ndarray:
    """Every 8-byte window of ``buffer`` as a little-endian uint64 (a view: window i = bytes i..i+7)."""
    return np.ndarray(shape=(len(buffer) - 7,), dtype="<u8", buffer=buffer, strides=(1,))


def _chunk(windows: np.ndarray, starts: np.ndarray, lengths: np.ndarray, k: int) -> np.ndarray:
    """Bytes ``8k`` to ``8k+8`` of each word as a uint64, zero past the word's end.

    ``windows``: ``_windows`` of a ``padded`` byte array; ``starts``/``lengths`` in bytes (int64 arrays).
    """
    at = starts + 8 * k
    if k:  # a chunk past a word's end is masked to zero: read it anywhere in the buffer
        np.minimum(at, len(windows) - 1, out=at)
    return windows[at] & _MASKS[np.clip(lengths - 8 * k, 0, 8)]


class _HashMap:
    """Non-zero uint64 keys -> int64 values, an open-addressing table looked up for many keys at once.

    Multiplicative hashing into a power-of-two table at most ``1/spread`` full, linear probing, 0 marking an
    empty slot (so a key must never be 0); a look-up probes all keys in step and stops for each at its
    key or at an empty slot. Raises ValueError for a zero or duplicate key.
    """

    def __init__(self, keys: np.ndarray, values: np.ndarray, spread: int = 4) -> None:
        size = 1 << max(int(spread * len(keys)).bit_length(), 4)
        self._shift = np.uint64(64 - (size.bit_length() - 1))
        self._mask = size - 1
        # slot -> (key, value as uint64), side by side: one gather reads both; an empty slot is (0, -1)
        self._table = np.zeros((size, 2), dtype=np.uint64)
        self._table[:, 1] = _NONE
        self._probes = 1
        for key, slot, value in zip(keys.tolist(), self._slots(keys).tolist(), values.tolist()):
            if key == 0:
                raise ValueError("key 0 in a word look-up table")
            probes = 1
            while self._table[slot, 0]:
                if int(self._table[slot, 0]) == key:
                    raise ValueError(f"duplicate key {key} in a word look-up table")
                slot = (slot + 1) & self._mask
                probes += 1
            self._table[slot] = (key, value)
            self._probes = max(self._probes, probes)

    def _slots(self, keys: np.ndarray) -> np.ndarray:
        # int64 slots: numpy gathers several times faster with them than with uint64 indices
        return ((keys.astype(np.uint64, copy=False) * _MIXES[0]) >> self._shift).astype(np.int64)

    def get(self, keys: np.ndarray) -> np.ndarray:
        """The value of each key (int64; ``-1`` where the key is absent or 0)."""
        keys = keys.astype(np.uint64, copy=False)
        slots = self._slots(keys)
        rows = self._table.take(slots, axis=0)  # take: far faster than fancy indexing of a 2-d array
        found = rows[:, 0] == keys
        out = np.where(found, rows[:, 1], _NONE).view(np.int64)
        todo = np.flatnonzero(~found)
        todo = todo[rows[todo, 0] != 0]  # still probing: the slot holds another key
        keys, slots = keys[todo], slots[todo]
        for _ in range(self._probes - 1):
            if not len(todo):
                break
            slots = (slots + 1) & self._mask
            rows = self._table.take(slots, axis=0)
            found = rows[:, 0] == keys
            out[todo[found]] = rows[found, 1].view(np.int64)
            more = ~found & (rows[:, 0] != 0)
            todo, keys, slots = todo[more], keys[more], slots[more]
        return out


def _mix(chunks: np.ndarray, lengths: np.ndarray, multiplier: np.uint64) -> np.ndarray:
    """One uint64 per row of ``chunks`` (words of more than one chunk), mixing in the length."""
    mult = multiplier
    mixed = lengths.astype(np.uint64) * mult
    for k in range(chunks.shape[1]):
        mixed = (mixed ^ chunks[:, k]) * mult
    return mixed | np.uint64(1)  # odd: never 0, the empty slot of a _HashMap


class _Table:
    """The vocabulary words (UTF-8 bytes): one-chunk words by their chunk, longer ones by a verified mix."""

    def __init__(self, words: Sequence[str]) -> None:
        encoded = [np.frombuffer(w.encode("utf-8", "surrogatepass"), dtype=np.uint8) for w in words]
        lengths = np.array([len(e) for e in encoded], dtype=np.int64)
        self.max_len = int(lengths.max()) if len(words) else 0
        self.n_chunks = max(-(-self.max_len // 8), 1)
        windows = _windows(padded(np.concatenate(encoded) if encoded else np.zeros(0, dtype=np.uint8)))
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if len(words) else _EMPTY
        chunks = np.stack([_chunk(windows, starts, lengths, k) for k in range(self.n_chunks)], axis=1)
        ids = np.arange(len(words), dtype=np.int64)
        short = lengths <= 8
        # one-chunk words: the chunk is the key (distinct words, distinct keys; never 0: no word is empty)
        self.short = _HashMap(chunks[short, 0], ids[short], spread=8)  # looked up for every word: sparser
        # longer words: a mix of chunks and length, verified against the word's chunks on a hit
        self.long_chunks, self.long_lengths, self.long_ids = chunks[~short], lengths[~short], ids[~short]
        rows = np.arange(len(self.long_ids), dtype=np.int64)
        for multiplier in _MIXES:
            try:
                self.long = _HashMap(_mix(self.long_chunks, self.long_lengths, multiplier), rows)
                break
            except ValueError:  # two long words with one mix: try another multiplier
                continue
        else:  # pragma: no cover - three 64-bit mixes colliding on one vocabulary
            raise ValueError("word look-up: no multiplier gives distinct keys for this vocabulary")
        self.multiplier = multiplier

    def lookup(self, windows: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Vocabulary id of each word (int64; ``-1``: not in the vocabulary)."""
        # a one-chunk word's key is its chunk; a longer word's is 0 here (the mask for 9 bytes)
        clipped = np.minimum(lengths, 9)
        key = windows[starts]
        key &= _FIRST_MASKS[clipped]
        out = self.short.get(key)
        if not len(self.long_ids):
            return out
        long = np.flatnonzero(clipped > 8)
        long = long[lengths[long] <= self.max_len]
        if not len(long):
            return out
        s, n = starts[long], lengths[long]
        chunks = np.stack([_chunk(windows, s, n, k) for k in range(self.n_chunks)], axis=1)
        rows = self.long.get(_mix(chunks, n, self.multiplier))
        hit = np.flatnonzero(rows >= 0)
        rows = rows[hit]
        same = (self.long_lengths[rows] == n[hit]) & (
            self.long_chunks.take(rows, axis=0) == chunks.take(hit, axis=0)
        ).all(axis=1)
        out[long[hit[same]]] = self.long_ids[rows[same]]  # exact: length and every byte compared
        return out


class PhraseIndex:
    """Patterns (tuples of normalised words) -> int values, found as whole-word runs in normalised text.

    ``scan(data)`` takes the UTF-8 bytes of ``" w w \\0 w w "`` text (uint8, as ``normalise.normalise_utf8``
    gives them) and returns every (caption, value) occurrence.
    Raises ValueError for an empty pattern or a word that is not a normalised word (empty, or with a
    space or the separator in it).
    """

    def __init__(self, patterns: Mapping[tuple[str, ...], int]) -> None:
        words = sorted({w for p in patterns for w in p})
        for w in words:
            if not w or " " in w or "\x00" in w:
                raise ValueError(f"phrase pattern word {w!r} is not a normalised word")
        index = {w: i for i, w in enumerate(words)}
        self.n_words = len(words)
        self.n_patterns = len(patterns)
        self._table = _Table(words)
        # trie over word ids: state 0 is the root; state s + word w -> child, keyed s * (n_words + 1) + w + 1
        # (never 0; a word outside the vocabulary, id -1, gives a key no child has)
        self._stride = self.n_words + 1
        children: dict[int, int] = {}
        values = [-1]
        for pattern, value in patterns.items():
            if not pattern:
                raise ValueError("phrase pattern with no word")
            state = 0
            for w in pattern:
                key = state * self._stride + index[w] + 1
                if key not in children:
                    children[key] = len(values)
                    values.append(-1)
                state = children[key]
            values[state] = int(value)
        self.max_words = max((len(p) for p in patterns), default=0)
        keys = np.array(list(children), dtype=np.int64)
        states = np.array(list(children.values()), dtype=np.int64)
        self._children = _HashMap(keys.astype(np.uint64), states)
        self._values = np.array(values, dtype=np.int64)
        self._has_child = np.zeros(len(values), dtype=bool)
        self._has_child[keys // self._stride] = True
        # word id -> state of its one-word prefix; the last entry (id -1: no vocabulary word) is no state
        self._root = np.full(self.n_words + 1, -1, dtype=np.int64)
        first = keys < self._stride
        self._root[keys[first] - 1] = states[first]
        # word id -> whether it comes second or later in some pattern (the last entry, id -1: no)
        self._follows = np.zeros(self.n_words + 1, dtype=bool)
        for pattern in patterns:
            self._follows[[index[w] for w in pattern[1:]]] = True

    def words(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(vocabulary id of each word, -1 if none; its caption) in normalised UTF-8 bytes ``codes``.

        Words are maximal runs of bytes other than the space; a separator is a word (id -1) that
        starts the next caption.
        """
        windows = _windows(padded(codes))
        space = codes == 32
        edges = np.flatnonzero(space[1:] != space[:-1]) + 1
        if len(codes) and not space[0]:
            edges = np.concatenate([[0], edges])
        if len(codes) and not space[-1]:
            edges = np.concatenate([edges, [len(codes)]])
        starts = edges[0::2]
        lengths = edges[1::2] - starts
        ids = self._table.lookup(windows, starts, lengths)
        return ids, np.cumsum(codes[starts] == 0)

    def scan(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(caption index, value) of every pattern occurrence in normalised ``codes`` (UTF-8 bytes, words
        separated by spaces, captions by `` \\0 ``), grouped by pattern length.
        Caption index = number of separators before the match."""
        if not len(codes) or not self.n_patterns:
            return _EMPTY, _EMPTY
        ids, captions = self.words(codes)
        # -1 words past the end: a phrase step never reads out of bounds
        ids = np.concatenate([ids, np.full(self.max_words, -1, dtype=np.int64)])
        state = self._root[ids[: len(captions)]]
        pos = np.flatnonzero(state >= 0)
        state = state[pos]
        out_pos, out_val = [], []
        depth = 1
        while len(pos):
            value = self._values[state]
            hit = np.flatnonzero(value >= 0)
            out_pos.append(pos[hit])
            out_val.append(value[hit])
            more = np.flatnonzero(self._has_child[state])
            if not len(more):
                break
            pos, state = pos[more], state[more]
            word = ids[pos + depth]
            # only a word that follows some pattern word can continue a path: a look-up in a small array
            # drops most positions before the (cache-missing) look-up in the trie's large table
            follows = np.flatnonzero(self._follows[word])
            pos, state, word = pos[follows], state[follows], word[follows]
            state = self._children.get(state * self._stride + word + 1)
            found = np.flatnonzero(state >= 0)
            pos, state = pos[found], state[found]
            depth += 1
        if not out_pos:
            return _EMPTY, _EMPTY
        pos, val = np.concatenate(out_pos), np.concatenate(out_val)
        return captions[pos], val
