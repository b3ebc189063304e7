"""Megatron "MMIDIDX" binidx token files, as RWKV-LM and gpt-neox write and read them.

`PREFIX.bin` holds the raw token ids back to back. `PREFIX.idx` is, little-endian:
    b"MMIDIDX\\x00\\x00"  (9 bytes)   magic
    <Q version (1)       <B dtype code (8 = uint16, 4 = int32, ...)
    <Q n_seqs            <Q n_doc_idx
    int32 sizes[n_seqs]      tokens in each sequence
    int64 pointers[n_seqs]   byte offset of each sequence in .bin
    int64 doc_idx[n_doc_idx] sequence index where each document starts, then n_seqs (so n_docs + 1 entries)
Our writer stores one sequence per document, with the end-of-document token 0 appended, as RWKV-LM's
make_data.py does.
"""
import os
import struct

import numpy as np

from src.data.tokenizer import EOD_ID

INDEX_MAGIC = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
DTYPE_CODES = {
    1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float32, 7: np.float64, 8: np.uint16,
}
CODE_OF_DTYPE = {np.dtype(dtype): code for code, dtype in DTYPE_CODES.items()}
_MAKE_HINT = "make them from a jsonl file with `python -m src.data.make_binidx input.jsonl PREFIX`"


def binidx_prefix(path):
    """The PREFIX of PREFIX.bin/PREFIX.idx; accepts the prefix itself or either file's name."""
    for suffix in (".bin", ".idx"):
        if path.endswith(suffix):
            return path[: -len(suffix)]
    return path


def require_binidx_files(path):
    """Raise FileNotFoundError naming what is missing unless both PREFIX.bin and PREFIX.idx exist."""
    prefix = binidx_prefix(path)
    missing = [p for p in (prefix + ".bin", prefix + ".idx") if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(
            f"binidx data {prefix!r} needs both {prefix}.bin and {prefix}.idx; missing: {', '.join(missing)}. "
            f"Pass the common prefix (without .bin/.idx) as --data_file, or {_MAKE_HINT}"
        )
    return prefix


def dtype_for_vocab(vocab_size):
    """Smallest id dtype Megatron readers accept for this vocabulary: uint16 up to 65536 ids, else int32."""
    if vocab_size <= 1:
        raise ValueError(f"vocab_size must be at least 2, got {vocab_size}")
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.int32)


class BinIdxWriter:
    """Streams documents into PREFIX.bin/PREFIX.idx; the files appear (atomically renamed) on `close()`.

    Use as a context manager; if the block raises, the partial files are removed and nothing is renamed.
    """

    def __init__(self, prefix, vocab_size):
        self.prefix = binidx_prefix(prefix)
        self.vocab_size = vocab_size
        self.dtype = dtype_for_vocab(vocab_size)
        self._sizes = []
        self._bin_tmp = self.prefix + ".bin.tmp"
        self._idx_tmp = self.prefix + ".idx.tmp"
        folder = os.path.dirname(os.path.abspath(self.prefix))
        os.makedirs(folder, exist_ok=True)
        self._bin = open(self._bin_tmp, "wb")

    def add_document(self, token_ids):
        """Append one document's ids followed by the end-of-document token 0."""
        ids = np.asarray(token_ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            bad = int(ids.max()) if ids.max() >= self.vocab_size else int(ids.min())
            raise ValueError(
                f"token id {bad} does not fit vocab_size {self.vocab_size} (document {len(self._sizes)}); "
                f"use the tokenizer whose vocabulary made these ids"
            )
        ids = np.append(ids, EOD_ID).astype(self.dtype)
        self._bin.write(ids.tobytes(order="C"))
        self._sizes.append(ids.size)

    @property
    def num_docs(self):
        return len(self._sizes)

    @property
    def num_tokens(self):
        return int(sum(self._sizes))

    def close(self):
        """Write the index and move both files into place."""
        self._bin.flush()
        os.fsync(self._bin.fileno())
        self._bin.close()
        sizes = np.asarray(self._sizes, dtype=np.int32)
        pointers = np.zeros(sizes.size, dtype=np.int64)
        if sizes.size:
            pointers[1:] = np.cumsum(sizes[:-1], dtype=np.int64) * self.dtype.itemsize
        doc_idx = np.arange(sizes.size + 1, dtype=np.int64)
        with open(self._idx_tmp, "wb") as index:
            index.write(INDEX_MAGIC)
            index.write(struct.pack("<Q", INDEX_VERSION))
            index.write(struct.pack("<B", CODE_OF_DTYPE[self.dtype]))
            index.write(struct.pack("<Q", sizes.size))
            index.write(struct.pack("<Q", doc_idx.size))
            index.write(sizes.tobytes(order="C"))
            index.write(pointers.tobytes(order="C"))
            index.write(doc_idx.tobytes(order="C"))
            index.flush()
            os.fsync(index.fileno())
        os.replace(self._bin_tmp, self.prefix + ".bin")
        os.replace(self._idx_tmp, self.prefix + ".idx")

    def abort(self):
        """Close and delete the partial files."""
        self._bin.close()
        for path in (self._bin_tmp, self._idx_tmp):
            if os.path.exists(path):
                os.remove(path)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, traceback):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


def write_binidx(prefix, documents, vocab_size):
    """Write an iterable of token-id lists as PREFIX.bin/PREFIX.idx (eod 0 appended to each); returns prefix."""
    with BinIdxWriter(prefix, vocab_size) as writer:
        for ids in documents:
            writer.add_document(ids)
    return writer.prefix


class BinIdxReader:
    """Memory-mapped reader of PREFIX.bin/PREFIX.idx.

    `num_docs`, `num_tokens`, `doc(i)` (the ids of document i, eod included when the file has one),
    `doc_bounds` (token start/end of every document), `get(offset, length)` (a window of the whole stream),
    and `tokens` (the memory-mapped stream itself). Picklable: worker processes reopen the map.
    """

    def __init__(self, path):
        self.prefix = require_binidx_files(path)
        self._read_index()
        self._tokens = None

    def _corrupt(self, problem):
        return ValueError(f"{self.prefix}.idx is not a valid binidx index: {problem}; rebuild it ({_MAKE_HINT})")

    def _read_index(self):
        with open(self.prefix + ".idx", "rb") as index:
            header = index.read(len(INDEX_MAGIC) + 8 + 1 + 8 + 8)
        compared = min(len(header), len(INDEX_MAGIC))
        if header[:compared] != INDEX_MAGIC[:compared]:
            raise self._corrupt("it does not start with the MMIDIDX magic bytes")
        if len(header) < 34:
            raise self._corrupt(f"it holds {len(header)} bytes, fewer than the 34-byte header (magic, version, "
                                f"dtype, counts); it is truncated")
        (version,) = struct.unpack("<Q", header[9:17])
        (dtype_code,) = struct.unpack("<B", header[17:18])
        n_seqs, n_doc_idx = struct.unpack("<QQ", header[18:34])
        if version != INDEX_VERSION:
            raise self._corrupt(f"version {version}, only version {INDEX_VERSION} exists")
        if dtype_code not in DTYPE_CODES or dtype_code in (6, 7):
            raise self._corrupt(f"dtype code {dtype_code} is not an integer token type")
        self.dtype = np.dtype(DTYPE_CODES[dtype_code])
        expected = 34 + n_seqs * (4 + 8) + n_doc_idx * 8
        if os.path.getsize(self.prefix + ".idx") < expected:
            raise self._corrupt(f"the file is shorter than its header says ({expected} bytes); it is truncated")
        index_map = np.memmap(self.prefix + ".idx", mode="r", dtype=np.uint8)
        offset = 34
        self.sizes = np.frombuffer(index_map, dtype=np.int32, count=n_seqs, offset=offset).astype(np.int64)
        offset += n_seqs * 4
        self.pointers = np.frombuffer(index_map, dtype=np.int64, count=n_seqs, offset=offset).copy()
        offset += n_seqs * 8
        self.doc_idx = np.frombuffer(index_map, dtype=np.int64, count=n_doc_idx, offset=offset).copy()
        del index_map

        seq_starts = self.pointers // self.dtype.itemsize
        seq_ends = seq_starts + self.sizes
        self.num_tokens = int(seq_ends.max()) if n_seqs else 0
        needed_bytes = self.num_tokens * self.dtype.itemsize
        bin_bytes = os.path.getsize(self.prefix + ".bin")
        if bin_bytes < needed_bytes:
            raise ValueError(
                f"{self.prefix}.bin holds {bin_bytes} bytes but its index refers to {needed_bytes}; the .bin file "
                f"is truncated or belongs to another index ({_MAKE_HINT})"
            )
        if bin_bytes != needed_bytes:
            raise ValueError(
                f"{self.prefix}.bin holds {bin_bytes} bytes but its index describes {needed_bytes} "
                f"({self.num_tokens} {self.dtype.name} tokens): the .bin and .idx come from different conversions; "
                f"convert the data again so both are written together ({_MAKE_HINT})"
            )
        # Documents group consecutive sequences (doc_idx); files without a usable doc_idx are read as one
        # document per sequence, which is also what our writer and RWKV-LM's make_data.py produce.
        groups = self.doc_idx
        usable = (groups.size >= 2 and groups[0] == 0 and groups[-1] == n_seqs
                  and bool(np.all(np.diff(groups) > 0)))
        if not usable:
            groups = np.arange(n_seqs + 1, dtype=np.int64)
        first, last = groups[:-1], groups[1:] - 1
        self.doc_bounds = np.stack([seq_starts[first], seq_ends[last]], axis=1).reshape(-1, 2)

    @property
    def tokens(self):
        """The whole token stream as a read-only numpy memmap."""
        if self._tokens is None:
            if self.num_tokens == 0:
                self._tokens = np.zeros(0, dtype=self.dtype)
            else:
                self._tokens = np.memmap(self.prefix + ".bin", mode="r", dtype=self.dtype, shape=(self.num_tokens,))
        return self._tokens

    @property
    def num_docs(self):
        return int(self.doc_bounds.shape[0])

    def doc(self, index):
        """Token ids of document `index` (a numpy view)."""
        if not 0 <= index < self.num_docs:
            raise IndexError(f"document {index} out of range: {self.prefix} has {self.num_docs} documents")
        start, end = self.doc_bounds[index]
        return self.tokens[start:end]

    def get(self, offset, length):
        """`length` ids of the whole stream starting at token `offset` (a numpy view)."""
        if offset < 0 or length < 0 or offset + length > self.num_tokens:
            raise IndexError(
                f"window [{offset}, {offset + length}) is outside {self.prefix}'s {self.num_tokens} tokens"
            )
        return self.tokens[offset:offset + length]

    def __len__(self):
        return self.num_docs

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_tokens"] = None  # pickling a memmap would copy the whole file; reopen it instead
        return state
