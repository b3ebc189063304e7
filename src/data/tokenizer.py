"""Tokenizers: the RWKV "world" vocabulary (greedy longest match over bytes) and a byte-level one.

Both map text to ids and back with the same interface, and both reserve id 0 as the end-of-document token:
`encode(str) -> list[int]`, `decode(list[int]) -> str`, `decode_bytes(list[int]) -> bytes`, `vocab_size`,
`eod_id`, `name`, and `token_byte_lengths` (a numpy array: how many bytes of text each id stands for).
"""
import ast
import functools
import os

import numpy as np

EOD_ID = 0
WORLD_VOCAB_NAME = "rwkv_vocab_v20230424.txt"
WORLD_VOCAB_SIZE = 65536  # the model's embedding size; the file defines ids 1..65529, the rest are unused
BYTE_VOCAB_SIZE = 256
_TOKEN_ID_KEY = 256  # trie nodes are dicts keyed by byte value 0..255; this key holds the id ending there


def default_world_vocab_file():
    """Path of the world vocabulary shipped inside the installed `rwkv` package."""
    try:
        import rwkv
    except ImportError as exc:
        raise RuntimeError(
            "the world tokenizer reads rwkv_vocab_v20230424.txt from the `rwkv` pip package, which is not "
            "installed; run `pip install rwkv` or pass vocab_file=PATH to the vocabulary file"
        ) from exc
    return os.path.join(os.path.dirname(os.path.abspath(rwkv.__file__)), WORLD_VOCAB_NAME)


def _check_ids(ids, vocab_size, name):
    for token_id in ids:
        if not 0 <= token_id < vocab_size:
            raise ValueError(
                f"token id {token_id} is outside the {name} tokenizer's vocabulary [0, {vocab_size}); "
                f"the ids were made with another tokenizer or are corrupt"
            )


class WorldTokenizer:
    """RWKV world tokenizer: greedy longest-match over UTF-8 bytes with the rwkv_vocab_v20230424 table."""

    name = "world"
    eod_id = EOD_ID
    vocab_size = WORLD_VOCAB_SIZE

    def __init__(self, vocab_file=None):
        vocab_file = vocab_file or default_world_vocab_file()
        if not os.path.isfile(vocab_file):
            raise FileNotFoundError(f"world vocabulary file not found: {vocab_file}; reinstall the `rwkv` package")
        self.vocab_file = vocab_file
        self._id_to_bytes = [b""] * self.vocab_size
        self._root = {}
        with open(vocab_file, "r", encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, start=1):
                token_id, token = self._parse_vocab_line(line, line_number)
                self._id_to_bytes[token_id] = token
                node = self._root
                for byte in token:
                    node = node.setdefault(byte, {})
                node[_TOKEN_ID_KEY] = token_id
        self.token_byte_lengths = np.array([len(b) for b in self._id_to_bytes], dtype=np.int64)

    def _parse_vocab_line(self, line, line_number):
        # A line is "<id> <python literal of str or bytes> <byte length>"; the literal may contain spaces.
        first_space, last_space = line.index(" "), line.rindex(" ")
        token_id = int(line[:first_space])
        token = ast.literal_eval(line[first_space + 1:last_space])
        if isinstance(token, str):
            token = token.encode("utf-8")
        if len(token) != int(line[last_space + 1:]) or not 0 < token_id < self.vocab_size:
            raise ValueError(f"{self.vocab_file} line {line_number} is malformed: {line.strip()!r}")
        return token_id, token

    def encode_bytes(self, data):
        """Token ids of a bytes string (greedy longest match, as the rwkv package's TRIE_TOKENIZER)."""
        ids = []
        root = self._root
        position, length = 0, len(data)
        while position < length:
            node, cursor = root, position
            best_id, best_end = None, position
            while cursor < length:
                node = node.get(data[cursor])
                if node is None:
                    break
                cursor += 1
                token_id = node.get(_TOKEN_ID_KEY)
                if token_id is not None:
                    best_id, best_end = token_id, cursor
            # Every single byte is a token, so a match of at least one byte always exists.
            ids.append(best_id)
            position = best_end
        return ids

    def encode(self, text):
        """Token ids of `text` (no end-of-document token is added)."""
        return self.encode_bytes(text.encode("utf-8"))

    def decode_bytes(self, ids):
        """The bytes the ids stand for; the end-of-document id and unused ids contribute nothing."""
        ids = [int(i) for i in ids]
        _check_ids(ids, self.vocab_size, self.name)
        return b"".join(self._id_to_bytes[i] for i in ids)

    def decode(self, ids):
        """Text of the ids; a cut UTF-8 sequence becomes U+FFFD instead of raising."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


class ByteTokenizer:
    """Byte-level tokenizer for tiny models: UTF-8 byte b is id b; id 0 (the NUL byte) is end-of-document."""

    name = "byte"
    eod_id = EOD_ID
    vocab_size = BYTE_VOCAB_SIZE

    def __init__(self):
        self.token_byte_lengths = np.ones(self.vocab_size, dtype=np.int64)
        self.token_byte_lengths[self.eod_id] = 0

    def encode_bytes(self, data):
        """Token ids of a bytes string; refuses NUL bytes, which would read as end-of-document."""
        if b"\x00" in data:
            raise ValueError(
                f"text contains a NUL character at byte {data.index(0)}; the byte tokenizer reserves id 0 for "
                f"end-of-document: remove NUL characters from the data or use the world tokenizer"
            )
        return list(data)

    def encode(self, text):
        """Token ids of `text` (no end-of-document token is added)."""
        return self.encode_bytes(text.encode("utf-8"))

    def decode_bytes(self, ids):
        """The bytes the ids stand for; the end-of-document id contributes nothing."""
        ids = [int(i) for i in ids]
        _check_ids(ids, self.vocab_size, self.name)
        return bytes(i for i in ids if i != self.eod_id)

    def decode(self, ids):
        """Text of the ids; a cut UTF-8 sequence becomes U+FFFD instead of raising."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


TOKENIZER_NAMES = ("world", "byte")


@functools.lru_cache(maxsize=None)
def _cached_world_tokenizer(vocab_file):
    return WorldTokenizer(vocab_file)


def get_tokenizer(name="world", vocab_file=None):
    """Tokenizer by name: "world" (RWKV world vocabulary, 65536 ids) or "byte" (UTF-8 bytes, 256 ids).

    The world table takes about a second to load, so it is built once per process and vocabulary file.
    """
    if name == "world":
        return _cached_world_tokenizer(vocab_file or default_world_vocab_file())
    if name == "byte":
        return ByteTokenizer()
    raise ValueError(f"unknown tokenizer {name!r}; choose one of {', '.join(TOKENIZER_NAMES)}")
