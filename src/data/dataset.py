"""Training samples from binidx, jsonl text, or instruction (SFT) data.

Sampling follows RWKV-PEFT's `--dataload` modes, with its bugs fixed:
- "get":  a random window of ctx_len+1 tokens of the whole token stream (documents joined by their eod 0).
          The window is a pure function of (seed, epoch, global sample index): resuming mid-epoch replays the
          same samples and every rank draws different ones.
- "pad":  one document per sample, cut to ctx_len+1 tokens and padded with 0; it never runs into the next
          document. Documents are visited in a seeded random order per pass (file order with shuffle=False);
          the position continues across epochs and wraps around the document count, so no document is
          skipped and no index runs past the end.
- "only": one document per sample at its own length (at most ctx_len+1 tokens); needs micro_bsz=1.
Documents with fewer than 2 tokens have no next-token target and are left out of "pad" and "only".

Every sample is {"input_ids": LongTensor[T], "targets": LongTensor[T], "loss_mask": FloatTensor[T]} with
targets[t] = the token after input_ids[t], and loss_mask[t] weighting the loss on targets[t]:
- "none": all ones (padding included, as in RWKV-PEFT).
- "pad":  1 on real targets, 0 on padding ("get" windows have no padding: all ones).
- "qa":   1 only on targets that belong to the assistant's reply: the tokens after the assistant cue up to and
          including the end-of-document token. For data_type "sft" this comes from token positions (prompt
          and response are tokenized separately). For "binidx"/"jsonl" it is read from the text with the
          template's markers: a token counts when all its bytes lie between an assistant cue ("Assistant:")
          and the next user marker ("User:") or the end of the document; the eod token counts when the
          document ends inside a reply. A "get" window starts in the prompt state, so a reply already under
          way at the window's first token is masked out until the next assistant cue.
"""
import json
import os
import signal
from dataclasses import dataclass

import numpy as np
import torch

from src.data.binidx import BinIdxReader, dtype_for_vocab, require_binidx_files
from src.data.templates import get_template

DATA_TYPES = ("binidx", "jsonl", "sft")
DATALOADS = ("get", "pad", "only")
LOSS_MASKS = ("none", "pad", "qa")
_QA_CHECK_TOKENS = 1 << 18  # how much of the stream the startup check for the assistant cue reads
_RANGE_CHECK_CHUNK = 1 << 24


def ignore_sigterm_in_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: ignore SIGTERM. Schedulers signal every process of a job; a worker killed by it
    makes the training process fail with "DataLoader worker exited unexpectedly" instead of saving a checkpoint
    and exiting 143. The worker still ends when the training process shuts its loader down."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _choice_error(what, value, choices):
    return ValueError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")


@dataclass
class DataConfig:
    """Where the data is and how to sample it (train.py fills this from its flags of the same names).

    data_file: binidx PREFIX (PREFIX.bin + PREFIX.idx), or a .jsonl file (JSON Lines; sft data may also be
    one JSON array, as MetaMathQA-395K.json ships). sft_fields: the query and response field names.
    text_field: the text field of jsonl data. shuffle: visit documents in a seeded random order ("pad"/"only").
    """

    data_file: str
    data_type: str = "binidx"
    ctx_len: int = 512
    micro_bsz: int = 1
    epoch_steps: int = 1000
    dataload: str = "get"
    loss_mask: str = "none"
    sft_fields: tuple = ("query", "response")
    template: str = "rwkv"
    seed: int = 0
    world_size: int = 1
    rank: int = 0
    text_field: str = "text"
    shuffle: bool = True

    def __post_init__(self):
        if self.data_type not in DATA_TYPES:
            raise _choice_error("data_type", self.data_type, DATA_TYPES)
        if self.dataload not in DATALOADS:
            raise _choice_error("dataload", self.dataload, DATALOADS)
        if self.loss_mask not in LOSS_MASKS:
            raise _choice_error("loss_mask", self.loss_mask, LOSS_MASKS)
        get_template(self.template)
        self.sft_fields = tuple(self.sft_fields)
        if len(self.sft_fields) != 2:
            raise ValueError(f"sft_fields needs two names (query, response), got {self.sft_fields!r}")
        for name in ("ctx_len", "micro_bsz", "epoch_steps", "world_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} must be in [0, world_size={self.world_size})")
        if self.seed < 0:
            raise ValueError(f"seed must be non-negative, got {self.seed}")
        if self.dataload == "only" and self.micro_bsz != 1:
            raise ValueError(
                f"dataload 'only' gives every sample its own length, so it cannot batch: micro_bsz must be 1 "
                f"(got {self.micro_bsz}); use --micro_bsz 1 or --dataload pad"
            )


class InMemoryTokens:
    """A token stream held in memory, with the same attributes as BinIdxReader.

    tokens: 1-D id array; doc_bounds: [n_docs, 2] token start/end; response_mask: per-token 1 where the
    token is part of an assistant reply (sft data only, else None).
    """

    def __init__(self, path, documents, vocab_size, response_flags=None):
        self.prefix = path
        lengths = np.array([len(d) for d in documents], dtype=np.int64)
        ends = np.cumsum(lengths)
        self.doc_bounds = np.stack([ends - lengths, ends], axis=1).reshape(-1, 2)
        dtype = dtype_for_vocab(vocab_size)
        self.tokens = np.concatenate(documents).astype(dtype, copy=False) if documents else np.zeros(0, dtype)
        self.response_mask = np.concatenate(response_flags).astype(np.uint8) if response_flags else None
        self.num_tokens = int(self.tokens.size)

    @property
    def num_docs(self):
        return int(self.doc_bounds.shape[0])


def _decode_utf8(raw: bytes, path, line_number):
    """raw decoded as UTF-8 (a leading byte-order mark dropped), or ValueError naming the file, line and byte."""
    try:
        return raw.decode("utf-8-sig" if line_number in (None, 1) else "utf-8")
    except UnicodeDecodeError as exc:
        if line_number is None:  # the whole file: count the lines before the bad byte
            line_number = raw.count(b"\n", 0, exc.start) + 1
            column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        else:
            column = exc.start + 1
        raise ValueError(
            f"{path} line {line_number} is not UTF-8 (byte 0x{raw[exc.start]:02x} at byte column {column}); "
            f"save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8) or fix that line"
        ) from None


def _iter_json_records(path):
    """Yield (location, record) from JSON Lines, or from one JSON array when the file starts with "["."""
    with open(path, "rb") as handle:
        head = handle.read(4096).lstrip()
        handle.seek(0)
        if head.startswith(b"["):
            raw = handle.read()
            try:
                records = json.loads(_decode_utf8(raw, path, line_number=None))
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"{path} starts with '[' but is not valid JSON (line {exc.lineno}, column {exc.colno}: "
                    f"{exc.msg}); fix the file or write it as JSON Lines (one object per line)"
                ) from None
            for item_number, record in enumerate(records):
                yield f"{path} item {item_number}", record
            return
        for line_number, raw_line in enumerate(handle, start=1):
            line = _decode_utf8(raw_line, path, line_number)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"{path} line {line_number} is not valid JSON ({exc.msg} at column {exc.colno}); "
                    f"every line must be one JSON object, e.g. {{\"text\": \"...\"}}"
                ) from None
            yield f"{path} line {line_number}", record


def _string_field(record, field, location, flag_hint):
    if not isinstance(record, dict):
        raise ValueError(f"{location} is a JSON {type(record).__name__}, expected an object with a {field!r} field")
    if field not in record:
        present = ", ".join(repr(k) for k in record) or "none"
        raise ValueError(f"{location} has no {field!r} field (fields present: {present}); {flag_hint}")
    value = record[field]
    if not isinstance(value, str):
        raise ValueError(f"{location}: field {field!r} is a {type(value).__name__}, expected a string")
    return value


def iter_jsonl_texts(path, field="text"):
    """Yield the `field` string of every record of a jsonl file, with line numbers in any error."""
    hint = f"set the text field name (--field / text_field) to the file's, or add {field!r} to every line"
    for location, record in _iter_json_records(path):
        yield _string_field(record, field, location, hint)


def iter_sft_pairs(path, fields=("query", "response")):
    """Yield (query, response) strings of every record of a jsonl (or JSON array) file."""
    query_field, response_field = fields
    hint = "set --sft_field QUERY RESPONSE to the file's field names"
    for location, record in _iter_json_records(path):
        yield (_string_field(record, query_field, location, hint),
               _string_field(record, response_field, location, hint))


def _require_file(path, what):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} data file not found: {path}; check --data_file")


def _read_jsonl_tokens(cfg, tokenizer):
    _require_file(cfg.data_file, "jsonl")
    dtype = dtype_for_vocab(tokenizer.vocab_size)  # compact per-document arrays keep peak memory low
    documents = [np.asarray(tokenizer.encode(text) + [tokenizer.eod_id], dtype=dtype)
                 for text in iter_jsonl_texts(cfg.data_file, cfg.text_field)]
    return InMemoryTokens(cfg.data_file, documents, tokenizer.vocab_size)


def tokenize_sft_example(query, response, tokenizer, template="rwkv"):
    """(ids, response_flags) of prompt + response + eod; flags are 1 on the response tokens and the eod.

    Prompt and response are tokenized separately so the prompt tokens equal what evaluation feeds the model.
    """
    chosen = get_template(template)
    prompt_ids = tokenizer.encode(chosen.render_prompt(query))
    response_ids = tokenizer.encode(chosen.render_response(response)) + [tokenizer.eod_id]
    flags = np.concatenate([np.zeros(len(prompt_ids), np.uint8), np.ones(len(response_ids), np.uint8)])
    return np.asarray(prompt_ids + response_ids, dtype=np.int64), flags


def _read_sft_tokens(cfg, tokenizer):
    _require_file(cfg.data_file, "sft")
    dtype = dtype_for_vocab(tokenizer.vocab_size)  # compact per-document arrays keep peak memory low
    documents, flags = [], []
    for query, response in iter_sft_pairs(cfg.data_file, cfg.sft_fields):
        ids, response_flags = tokenize_sft_example(query, response, tokenizer, cfg.template)
        documents.append(ids.astype(dtype))
        flags.append(response_flags)
    return InMemoryTokens(cfg.data_file, documents, tokenizer.vocab_size, flags)


def text_response_flags(ids, tokenizer, template="rwkv"):
    """Per-token 1/0: is the token inside an assistant reply, judged from the decoded text's markers.

    The ids start in the prompt state; an eod token ends the document (and the reply, which includes it).
    """
    chosen = get_template(template)
    cue, user = chosen.assistant_marker.encode("utf-8"), chosen.user_marker.encode("utf-8")
    ids = np.asarray(ids, dtype=np.int64)
    flags = np.zeros(ids.size, dtype=np.uint8)
    eod_positions = np.flatnonzero(ids == tokenizer.eod_id)
    segment_starts = np.concatenate([[0], eod_positions + 1])
    segment_ends = np.concatenate([eod_positions, [ids.size]])
    for start, end in zip(segment_starts, segment_ends):
        segment = ids[start:end]
        text = tokenizer.decode_bytes(segment)
        # State changes along the bytes: +1 where a reply starts (after a cue), -1 where a user turn starts.
        events = np.zeros(len(text) + 1, dtype=np.int64)
        found = text.find(cue)
        while found >= 0:
            events[found + len(cue)] = 1
            found = text.find(cue, found + len(cue))
        found = text.find(user)
        while found >= 0:
            events[found] = -1  # a user turn starting where a cue ends wins: the reply is empty
            found = text.find(user, found + 1)
        # Forward-fill: the state at byte b is set by the last event at or before b (none: prompt state).
        last_event = np.maximum.accumulate(np.where(events != 0, np.arange(events.size), 0))
        state_at = (events[last_event] > 0).astype(np.int64)
        byte_in_reply = np.concatenate([[0], np.cumsum(state_at[:-1])])  # prefix count of reply bytes
        lengths = tokenizer.token_byte_lengths[segment]
        token_ends = np.cumsum(lengths)
        token_starts = token_ends - lengths
        reply_bytes = byte_in_reply[token_ends] - byte_in_reply[token_starts]
        whole_token_in_reply = (reply_bytes == lengths) & (lengths > 0)
        empty_token_in_reply = (lengths == 0) & (state_at[token_starts] == 1)
        flags[start:end] = whole_token_in_reply | empty_token_in_reply
        if end < ids.size:
            flags[end] = state_at[-1]  # the eod closes the document: part of the reply if one was open
    return flags


def check_token_range(dataset_or_tokens, vocab_size):
    """Raise ValueError if any token id is negative or >= vocab_size; returns the largest id (None if empty).

    Accepts a dataset from build_dataset, a BinIdxReader/InMemoryTokens, or any array of ids. Files whose
    dtype cannot hold an id >= vocab_size (uint16 data, vocab 65536) are not scanned.
    """
    source = getattr(dataset_or_tokens, "stream", dataset_or_tokens)
    where = getattr(source, "prefix", None)
    tokens = getattr(source, "tokens", source)
    if isinstance(tokens, torch.Tensor):
        tokens = tokens.detach().cpu().numpy()
    tokens = np.asarray(tokens).reshape(-1)
    if tokens.size == 0:
        return None
    dtype = np.dtype(tokens.dtype)
    if dtype.kind == "u" and np.iinfo(dtype).max < vocab_size:
        return None
    largest, smallest = None, None
    for start in range(0, tokens.size, _RANGE_CHECK_CHUNK):
        chunk = tokens[start:start + _RANGE_CHECK_CHUNK]
        chunk_max, chunk_min = int(chunk.max()), int(chunk.min())
        largest = chunk_max if largest is None else max(largest, chunk_max)
        smallest = chunk_min if smallest is None else min(smallest, chunk_min)
    label = f"data {where}" if where else "the token ids"
    if smallest < 0:
        raise ValueError(f"{label} contains a negative token id ({smallest}); the file is corrupt, rebuild it")
    if largest >= vocab_size:
        raise ValueError(
            f"{label} contains token id {largest}, but vocab_size is {vocab_size}: it was tokenized with a "
            f"larger vocabulary than the model's. Pass --vocab_size matching the base model (the world "
            f"tokenizer needs 65536, the byte tokenizer 256), or rebuild the data with the model's tokenizer "
            f"(make_binidx --tokenizer world|byte)"
        )
    return largest


class TokenDataset(torch.utils.data.Dataset):
    """Map-style dataset of epoch_steps * micro_bsz samples per rank; call set_epoch() before each epoch.

    Use it with shuffle=False and a sampler-free DataLoader: the randomness lives in the sample index, and
    worker processes must see set_epoch's value (num_workers=0, or workers not persistent across epochs).
    """

    def __init__(self, cfg, stream, tokenizer=None):
        self.cfg = cfg
        self.stream = stream
        self.tokenizer = tokenizer
        self.window = cfg.ctx_len + 1
        self.samples_per_epoch = cfg.epoch_steps * cfg.micro_bsz
        self.epoch = 0
        self.skip_samples = 0
        lengths = stream.doc_bounds[:, 1] - stream.doc_bounds[:, 0]
        self.trainable_docs = np.flatnonzero(lengths >= 2)
        self.unsupervised_docs = 0  # one-document samples whose reply starts beyond ctx_len (sft qa masks)
        self.ctx_len_keeping_all = None  # the ctx_len that keeps every reply (when known)
        self._order_cache = (None, None)

    def set_epoch(self, epoch, skip_samples=0):
        """Select the epoch whose samples to produce; skip_samples > 0 resumes mid-epoch after that many."""
        if epoch < 0 or not 0 <= skip_samples <= self.samples_per_epoch:
            raise ValueError(
                f"set_epoch needs epoch >= 0 and 0 <= skip_samples <= {self.samples_per_epoch}, "
                f"got epoch={epoch}, skip_samples={skip_samples}"
            )
        self.epoch = int(epoch)
        self.skip_samples = int(skip_samples)

    def __len__(self):
        return self.samples_per_epoch - self.skip_samples

    def global_index(self, index):
        """Index of local sample `index` among all ranks' samples of the current epoch."""
        return (index + self.skip_samples) * self.cfg.world_size + self.cfg.rank

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} out of range for an epoch of {len(self)} samples")
        if self.cfg.dataload == "get":
            return self._random_window(self.global_index(index))
        return self._document_sample(self.global_index(index))

    def _random_window(self, global_index):
        generator = np.random.default_rng([self.cfg.seed, self.epoch, global_index])
        offset = int(generator.integers(0, self.stream.num_tokens - self.window + 1))
        ids = np.asarray(self.stream.tokens[offset:offset + self.window], dtype=np.int64)
        if self.cfg.loss_mask == "qa":
            mask = self._response_flags(offset, ids)[1:]
        else:
            mask = np.ones(self.cfg.ctx_len, dtype=np.float32)
        return self._sample(ids, mask)

    def document_for(self, global_index):
        """Document index the pad/only sample at `global_index` of the current epoch reads."""
        samples_per_epoch_all_ranks = self.samples_per_epoch * self.cfg.world_size
        position = self.epoch * samples_per_epoch_all_ranks + global_index
        pass_number, within_pass = divmod(position, self.trainable_docs.size)
        return int(self._pass_order(pass_number)[within_pass])

    def _pass_order(self, pass_number):
        if not self.cfg.shuffle:
            return self.trainable_docs
        cached_pass, order = self._order_cache
        if cached_pass != pass_number:
            generator = np.random.default_rng([self.cfg.seed, pass_number])
            order = self.trainable_docs[generator.permutation(self.trainable_docs.size)]
            self._order_cache = (pass_number, order)
        return order

    def _document_sample(self, global_index):
        doc = self.document_for(global_index)
        start, end = (int(x) for x in self.stream.doc_bounds[doc])
        end = min(end, start + self.window)
        ids = np.asarray(self.stream.tokens[start:end], dtype=np.int64)
        if self.cfg.loss_mask == "qa":
            mask = self._response_flags(start, ids)[1:].astype(np.float32)
        else:
            mask = np.ones(ids.size - 1, dtype=np.float32)
        if self.cfg.dataload == "only":
            return self._sample(ids, mask)
        padding = self.window - ids.size
        padding_weight = 1.0 if self.cfg.loss_mask == "none" else 0.0
        ids = np.concatenate([ids, np.zeros(padding, dtype=np.int64)])
        mask = np.concatenate([mask, np.full(padding, padding_weight, dtype=np.float32)])
        return self._sample(ids, mask)

    def _response_flags(self, offset, ids):
        stored = getattr(self.stream, "response_mask", None)
        if stored is not None:
            return stored[offset:offset + ids.size]
        return text_response_flags(ids, self.tokenizer, self.cfg.template)

    @staticmethod
    def _sample(ids, mask):
        return {
            "input_ids": torch.from_numpy(ids[:-1].copy()),
            "targets": torch.from_numpy(ids[1:].copy()),
            "loss_mask": torch.from_numpy(np.asarray(mask, dtype=np.float32).copy()),
        }

    def summary(self):
        """One line for the start-of-run screen."""
        cfg = self.cfg
        return (f"{cfg.data_type} {self.stream.prefix}: {self.stream.num_docs} docs, {self.stream.num_tokens} "
                f"tokens | dataload {cfg.dataload}, loss_mask {cfg.loss_mask}, ctx_len {cfg.ctx_len}, "
                f"{self.samples_per_epoch} samples/epoch/rank")


def load_token_stream(cfg, tokenizer=None):
    """The token stream cfg describes: a memory-mapped BinIdxReader or an InMemoryTokens."""
    if cfg.data_type == "binidx":
        return BinIdxReader(require_binidx_files(cfg.data_file))
    if tokenizer is None:
        raise ValueError(f"data_type {cfg.data_type!r} is tokenized on load: pass a tokenizer (get_tokenizer(...))")
    if cfg.data_type == "jsonl":
        return _read_jsonl_tokens(cfg, tokenizer)
    return _read_sft_tokens(cfg, tokenizer)


def build_dataset(cfg, tokenizer=None, vocab_size=None):
    """Dataset of training samples for `cfg` (a DataConfig), checked at startup.

    tokenizer: needed for jsonl/sft data and for loss_mask "qa" on binidx data. vocab_size: the model's
    vocabulary (default: the tokenizer's); every token id must be below it.
    """
    stream = load_token_stream(cfg, tokenizer)
    if stream.num_docs == 0:
        raise ValueError(f"data {stream.prefix} contains no documents; check --data_file and rebuild the data")
    if stream.num_tokens == 0:
        raise ValueError(f"data {stream.prefix} contains no tokens; check --data_file and rebuild the data")
    if vocab_size is None:
        if tokenizer is None:
            raise ValueError("build_dataset needs vocab_size or a tokenizer to check token ids against")
        vocab_size = tokenizer.vocab_size
    check_token_range(stream, vocab_size)
    dataset = TokenDataset(cfg, stream, tokenizer)
    if cfg.dataload == "get" and stream.num_tokens < dataset.window:
        raise ValueError(
            f"data {stream.prefix} holds {stream.num_tokens} tokens, fewer than the ctx_len+1 = {dataset.window} "
            f"one 'get' sample reads; lower --ctx_len or use more data"
        )
    if cfg.dataload != "get" and dataset.trainable_docs.size == 0:
        raise ValueError(
            f"data {stream.prefix} has no document of 2 or more tokens, so dataload {cfg.dataload!r} has "
            f"nothing to train on; check the data"
        )
    if cfg.loss_mask == "qa" and getattr(stream, "response_mask", None) is None:
        _check_assistant_cue(cfg, stream, tokenizer)
    if cfg.loss_mask == "qa" and cfg.dataload != "get" and getattr(stream, "response_mask", None) is not None:
        dataset.unsupervised_docs, dataset.ctx_len_keeping_all = _check_replies_fit(cfg, stream, dataset)
    return dataset


def _check_replies_fit(cfg, stream, dataset):
    """(documents whose reply starts beyond ctx_len, the ctx_len that keeps every reply) for one-document
    samples ("pad"/"only") of sft data. A sample is cut to ctx_len+1 tokens, so a prompt of ctx_len tokens or
    more leaves it no supervised target: an all-zero mask, trained on for nothing. All of them: ValueError."""
    docs = dataset.trainable_docs
    starts, ends = stream.doc_bounds[docs, 0], stream.doc_bounds[docs, 1]
    replies = np.flatnonzero(stream.response_mask)  # stream positions of reply tokens
    nxt = np.searchsorted(replies, starts + 1)  # the first reply token that is a target (position >= 1)
    found = nxt < replies.size
    first = replies[np.minimum(nxt, max(replies.size - 1, 0))] if replies.size else np.zeros_like(starts)
    found &= first < ends
    none = np.iinfo(np.int64).max
    first_reply = np.where(found, first - starts, none)  # index in the document of its first reply target
    supervised = first_reply[first_reply < none]
    needed = int(supervised.max()) if supervised.size else None  # target index p needs ctx_len >= p
    lost = int(np.count_nonzero(first_reply > cfg.ctx_len))
    if lost == docs.size:
        keep = (f"--ctx_len {needed} keeps them all ({int(supervised.min())} keeps the one with the shortest "
                f"prompt)" if needed is not None else "no sample has a reply token at all; check --sft_field")
        raise ValueError(
            f"data {stream.prefix}: all {lost} samples have no supervised token within --ctx_len {cfg.ctx_len} "
            f"(every prompt fills the {cfg.ctx_len} positions before its reply starts), so every loss mask "
            f"would be all zero; {keep}"
        )
    return lost, needed


def _check_assistant_cue(cfg, stream, tokenizer):
    """Refuse text-marker qa masks on data that never shows the template's assistant cue (all-zero masks)."""
    if tokenizer is None:
        raise ValueError(
            f"loss_mask 'qa' on {cfg.data_type} data finds replies by decoding the text: pass the tokenizer "
            f"that made {cfg.data_file}"
        )
    cue = get_template(cfg.template).assistant_marker
    head = stream.tokens[:_QA_CHECK_TOKENS]
    if cue.encode("utf-8") not in tokenizer.decode_bytes(head):
        raise ValueError(
            f"loss_mask 'qa' trains only on replies after the assistant cue {cue!r} (template "
            f"{cfg.template!r}), but the first {head.size} tokens of {cfg.data_file} never contain it, so every "
            f"mask would be zero; use --data_type sft for query/response data, choose the template the data "
            f"was written with, or use --loss_mask pad"
        )
