"""Data pipeline tests: tokenizers against the rwkv package, binidx against an independent parser, sampling
and loss masks against hand-computed expectations, and every error message."""
import json
import os
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

from src.data import (
    BinIdxReader,
    DataConfig,
    build_dataset,
    check_token_range,
    get_tokenizer,
    render_sft_prompt,
    render_sft_response,
    text_response_flags,
    write_binidx,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_TEXTS = [
    "Hello world",
    "User: What is 2+2?\n\nAssistant: The answer is 4.",
    "中文和 English 混合，还有 emoji 🙂 and tabs\tand\r\nnewlines",
    "   leading spaces and trailing   ",
    "Ünïcödé ñ ß ø — “quotes” ‘single’ …",
    "################################################################################ long runs ----",
]


# ----------------------------------------------------------------------------- independent helpers


def parse_binidx_independently(prefix):
    """Minimal MMIDIDX reader written from the format description: (dtype, sizes, pointers, doc_idx, tokens)."""
    with open(prefix + ".idx", "rb") as handle:
        raw = handle.read()
    assert raw[:9] == b"MMIDIDX\x00\x00"
    version, code, n_seqs, n_docs = struct.unpack("<QBQQ", raw[9:34])
    assert version == 1
    dtype = {8: np.uint16, 4: np.int32}[code]
    sizes = np.frombuffer(raw, np.int32, n_seqs, 34)
    pointers = np.frombuffer(raw, np.int64, n_seqs, 34 + 4 * n_seqs)
    doc_idx = np.frombuffer(raw, np.int64, n_docs, 34 + 12 * n_seqs)
    assert len(raw) == 34 + 12 * n_seqs + 8 * n_docs
    tokens = np.fromfile(prefix + ".bin", dtype=dtype)
    return dtype, sizes, pointers, doc_idx, tokens


def write_binidx_independently(prefix, sequences, doc_idx):
    """Hand-rolled uint16 MMIDIDX writer (sequences grouped into documents by doc_idx)."""
    sizes = [len(s) for s in sequences]
    pointers = [2 * sum(sizes[:i]) for i in range(len(sizes))]
    with open(prefix + ".bin", "wb") as handle:
        for seq in sequences:
            handle.write(struct.pack(f"<{len(seq)}H", *seq))
    with open(prefix + ".idx", "wb") as handle:
        handle.write(b"MMIDIDX\x00\x00" + struct.pack("<QBQQ", 1, 8, len(sizes), len(doc_idx)))
        handle.write(struct.pack(f"<{len(sizes)}i", *sizes))
        handle.write(struct.pack(f"<{len(pointers)}q", *pointers))
        handle.write(struct.pack(f"<{len(doc_idx)}q", *doc_idx))


@pytest.fixture(scope="module")
def reference_tokenizer():
    import rwkv
    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER

    return TRIE_TOKENIZER(os.path.join(os.path.dirname(rwkv.__file__), "rwkv_vocab_v20230424.txt"))


@pytest.fixture(scope="module")
def world():
    return get_tokenizer("world")


@pytest.fixture
def byte_tok():
    return get_tokenizer("byte")


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write((record if isinstance(record, str) else json.dumps(record, ensure_ascii=False)) + "\n")
    return str(path)


def as_list(tensor):
    return [int(x) for x in tensor]


def reference_reply_flags(text, cue="Assistant:", user="User:"):
    """Per-character 0/1, a plain left-to-right loop: on after a cue, off at a user marker; "\x00" is the eod,
    which belongs to an open reply and then closes the document."""
    flags, state = [], 0
    for position, char in enumerate(text):
        if text.startswith(user, position):
            state = 0
        if char == "\x00":
            flags.append(state)
            state = 0
            continue
        flags.append(state)
        if text[:position + 1].endswith(cue):
            state = 1
    return flags


# ----------------------------------------------------------------------------- tokenizers


def test_world_tokenizer_matches_rwkv_package(world, reference_tokenizer):
    from rwkv.utils import PIPELINE

    pipeline = PIPELINE(None, "rwkv_vocab_v20230424")
    assert (world.vocab_size, world.eod_id, world.name) == (65536, 0, "world")
    for text in SAMPLE_TEXTS:
        ids = world.encode(text)
        assert ids == reference_tokenizer.encode(text)
        assert ids == pipeline.encode(text)
        assert world.decode(ids) == text
        assert reference_tokenizer.decode(ids) == text
        assert world.token_byte_lengths[ids].sum() == len(text.encode("utf-8"))


def test_world_decode_partial_utf8_and_eod(world):
    # id 1 + b is the single byte b in the world vocabulary; 0xC3 alone starts an unfinished 2-byte character
    assert world.decode([1 + 0xC3]) == "\ufffd"
    assert world.decode(world.encode("ok") + [0]) == "ok"
    with pytest.raises(ValueError, match="outside the world tokenizer's vocabulary"):
        world.decode([70000])


def test_byte_tokenizer(byte_tok):
    assert (byte_tok.vocab_size, byte_tok.eod_id, byte_tok.name) == (256, 0, "byte")
    assert byte_tok.encode("aé") == [97, 0xC3, 0xA9]
    assert byte_tok.decode([97, 0xC3]) == "a\ufffd"
    assert byte_tok.decode([104, 105, 0]) == "hi"
    for text in SAMPLE_TEXTS:
        assert byte_tok.decode(byte_tok.encode(text)) == text
    with pytest.raises(ValueError, match="NUL character at byte 1.*end-of-document"):
        byte_tok.encode("a\x00b")
    with pytest.raises(ValueError, match="unknown tokenizer 'gpt2'; choose one of world, byte"):
        get_tokenizer("gpt2")


# ----------------------------------------------------------------------------- binidx


def test_binidx_roundtrip_with_independent_parser(tmp_path, world):
    documents = [world.encode(text) for text in SAMPLE_TEXTS]
    prefix = write_binidx(str(tmp_path / "data"), documents, world.vocab_size)
    dtype, sizes, pointers, doc_idx, tokens = parse_binidx_independently(prefix)
    assert dtype == np.uint16
    assert list(sizes) == [len(d) + 1 for d in documents]
    assert list(pointers) == [2 * sum(len(d) + 1 for d in documents[:i]) for i in range(len(documents))]
    assert list(doc_idx) == list(range(len(documents) + 1))
    expected_stream = [t for d in documents for t in d + [0]]
    assert tokens.tolist() == expected_stream
    for i, text in enumerate(SAMPLE_TEXTS):
        start = pointers[i] // 2
        assert world.decode(tokens[start:start + sizes[i] - 1]) == text

    reader = BinIdxReader(prefix + ".bin")  # a file name works as well as the prefix
    assert (reader.num_docs, reader.num_tokens) == (len(documents), len(expected_stream))
    for i, doc in enumerate(documents):
        assert reader.doc(i).tolist() == doc + [0]
    assert reader.get(3, 10).tolist() == expected_stream[3:13]
    restored = pickle.loads(pickle.dumps(reader))
    assert restored.get(0, 5).tolist() == expected_stream[:5]


def test_binidx_int32_for_large_vocab(tmp_path):
    prefix = write_binidx(str(tmp_path / "big"), [[70000, 5], [65999]], vocab_size=100000)
    dtype, sizes, _, _, tokens = parse_binidx_independently(prefix)
    assert dtype == np.int32 and list(sizes) == [3, 2]
    assert tokens.tolist() == [70000, 5, 0, 65999, 0]
    assert BinIdxReader(prefix).doc(1).tolist() == [65999, 0]


def test_binidx_reader_groups_sequences_by_doc_idx(tmp_path):
    prefix = str(tmp_path / "neox")
    write_binidx_independently(prefix, [[1, 2], [3], [4, 5, 6, 0]], doc_idx=[0, 2, 3])
    reader = BinIdxReader(prefix)
    assert reader.num_docs == 2 and reader.num_tokens == 7
    assert reader.doc(0).tolist() == [1, 2, 3]
    assert reader.doc(1).tolist() == [4, 5, 6, 0]


def test_binidx_corrupt_files(tmp_path):
    prefix = str(tmp_path / "bad")
    write_binidx_independently(prefix, [[1, 2, 0]], doc_idx=[0, 1])
    with open(prefix + ".bin", "wb") as handle:
        handle.write(b"\x01\x00")  # one token where the index promises three
    with pytest.raises(ValueError, match=r"bad.bin holds 2 bytes but its index refers to 6; .*truncated"):
        BinIdxReader(prefix)
    with open(prefix + ".idx", "wb") as handle:
        handle.write(b"NOTANIDX" + bytes(40))
    with pytest.raises(ValueError, match="does not start with the MMIDIDX magic bytes; rebuild it"):
        BinIdxReader(prefix)


def test_make_binidx_cli(tmp_path, reference_tokenizer):
    texts = ["First document.", "Второй документ 🙂"]
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": t, "other": 1} for t in texts] + [""])
    prefix = str(tmp_path / "out" / "corpus")
    command = [sys.executable, "-m", "src.data.make_binidx", source, prefix, "--tokenizer", "world"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "2 documents" in done.stdout
    _, sizes, pointers, _, tokens = parse_binidx_independently(prefix)
    for i, text in enumerate(texts):
        doc = tokens[pointers[i] // 2: pointers[i] // 2 + sizes[i]].tolist()
        assert doc == reference_tokenizer.encode(text) + [0]

    sft = write_jsonl(tmp_path / "sft.jsonl", [{"q": "1+1?", "a": "2"}])
    command = [sys.executable, "-m", "src.data.make_binidx", sft, prefix, "--tokenizer", "byte",
               "--sft_fields", "q", "a"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    _, _, _, _, tokens = parse_binidx_independently(prefix)
    assert bytes(tokens.tolist()) == b"User: 1+1?\n\nAssistant: 2\x00"

    broken = write_jsonl(tmp_path / "broken.jsonl", ['{"text": "fine"}', '{"text": oops}'])
    command = [sys.executable, "-m", "src.data.make_binidx", broken, str(tmp_path / "never")]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "broken.jsonl line 2 is not valid JSON" in done.stderr
    assert not os.path.exists(str(tmp_path / "never.bin")) and not os.path.exists(str(tmp_path / "never.bin.tmp"))


# ----------------------------------------------------------------------------- sampling and masks


def test_pad_mask_by_hand(tmp_path, byte_tok):
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": "abc"}, {"text": ""}, {"text": "hello world"}])
    cfg = DataConfig(data, data_type="jsonl", ctx_len=5, micro_bsz=1, epoch_steps=3, dataload="pad",
                     loss_mask="pad", shuffle=False)
    dataset = build_dataset(cfg, byte_tok)
    assert len(dataset) == 3
    first, second, third = dataset[0], dataset[1], dataset[2]
    # "abc" + eod, then zero padding: it must not run into the next document ("hello world")
    assert as_list(first["input_ids"]) == [97, 98, 99, 0, 0]
    assert as_list(first["targets"]) == [98, 99, 0, 0, 0]
    assert as_list(first["loss_mask"]) == [1, 1, 1, 0, 0]
    # the empty document (eod only) has no target, so the second sample is "hello world" cut to 6 tokens
    assert byte_tok.decode(second["input_ids"]) == "hello"
    assert byte_tok.decode(second["targets"]) == "ello "
    assert as_list(second["loss_mask"]) == [1, 1, 1, 1, 1]
    assert as_list(third["input_ids"]) == as_list(first["input_ids"])  # wraps around two usable documents
    assert first["input_ids"].dtype == torch.long and first["loss_mask"].dtype == torch.float32
    dataset.set_epoch(1)  # epoch 1 continues at position 3 -> document "hello world"
    assert byte_tok.decode(dataset[0]["input_ids"]) == "hello"

    ones = build_dataset(DataConfig(data, data_type="jsonl", ctx_len=5, dataload="pad", loss_mask="none",
                                    shuffle=False), byte_tok)
    assert as_list(ones[0]["loss_mask"]) == [1, 1, 1, 1, 1]

    rank1 = build_dataset(DataConfig(data, data_type="jsonl", ctx_len=5, epoch_steps=2, dataload="pad",
                                     loss_mask="pad", shuffle=False, world_size=2, rank=1), byte_tok)
    assert byte_tok.decode(rank1[0]["input_ids"]) == "hello"  # global position 1
    assert byte_tok.decode(rank1[1]["input_ids"]) == "hello"  # global position 3 wraps to document 1


def test_pad_shuffle_visits_every_document_once_per_pass(tmp_path, byte_tok):
    texts = [f"doc {i}" for i in range(7)]
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in texts])
    cfg = DataConfig(data, data_type="jsonl", ctx_len=8, micro_bsz=1, epoch_steps=7, dataload="pad",
                     loss_mask="pad", seed=3)
    dataset = build_dataset(cfg, byte_tok)
    seen = [byte_tok.decode(dataset[i]["input_ids"]).rstrip() for i in range(7)]
    assert sorted(seen) == texts and seen != texts


def test_only_mode_variable_length(tmp_path, byte_tok):
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": "ab"}, {"text": "abcdefghij"}])
    cfg = DataConfig(data, data_type="jsonl", ctx_len=4, micro_bsz=1, epoch_steps=2, dataload="only",
                     loss_mask="pad", shuffle=False)
    dataset = build_dataset(cfg, byte_tok)
    assert as_list(dataset[0]["input_ids"]) == [97, 98] and as_list(dataset[0]["targets"]) == [98, 0]
    assert byte_tok.decode(dataset[1]["input_ids"]) == "abcd" and as_list(dataset[1]["loss_mask"]) == [1] * 4


def test_sft_qa_mask_by_hand(tmp_path, byte_tok):
    data = write_jsonl(tmp_path / "sft.jsonl", [{"query": "1+1?", "response": "2", "type": "x"}])
    cfg = DataConfig(data, data_type="sft", ctx_len=30, dataload="pad", loss_mask="qa")
    sample = build_dataset(cfg, byte_tok)[0]
    # byte tokens: "User: 1+1?\n\nAssistant:" is 6 + 4 + 2 + 10 = 22 tokens (positions 0..21),
    # then " 2" (positions 22, 23) and eod (24). targets[t] is token t+1, so the reply targets are t = 21..23.
    assert byte_tok.decode(sample["input_ids"][:22]) == "User: 1+1?\n\nAssistant:"
    assert as_list(sample["targets"][21:24]) == [ord(" "), ord("2"), 0]
    assert as_list(sample["loss_mask"]) == [0] * 21 + [1, 1, 1] + [0] * 6

    alpaca = build_dataset(DataConfig(data, data_type="sft", ctx_len=300, dataload="only", loss_mask="qa",
                                      template="alpaca"), byte_tok)[0]
    prompt = ("Below is an instruction that describes a task. Write a response that appropriately completes "
              "the request.\n\n### Instruction:\n1+1?\n\n### Response:\n")
    assert len(alpaca["input_ids"]) == len(prompt) + 1  # prompt + "2" + eod, minus the last input position
    expected = [0.0] * (len(prompt) - 1) + [1.0, 1.0]  # targets "2" and eod
    assert as_list(alpaca["loss_mask"]) == expected


def test_sft_from_json_array_and_custom_fields(tmp_path, byte_tok):
    path = tmp_path / "meta.json"
    path.write_text(json.dumps([{"instruction": "hi", "output": "yo"}]), encoding="utf-8")
    cfg = DataConfig(str(path), data_type="sft", ctx_len=40, dataload="only", loss_mask="qa",
                     sft_fields=("instruction", "output"))
    sample = build_dataset(cfg, byte_tok)[0]
    assert byte_tok.decode(sample["input_ids"]) == "User: hi\n\nAssistant: yo"
    assert int(sample["loss_mask"].sum()) == 4  # " ", "y", "o", eod


def test_templates():
    assert render_sft_prompt("Q", "rwkv") == "User: Q\n\nAssistant:"
    assert render_sft_response("A", "rwkv") == " A"
    assert render_sft_prompt("Q {x}", "alpaca").endswith("### Instruction:\nQ {x}\n\n### Response:\n")
    assert render_sft_response("A", "alpaca") == "A"
    with pytest.raises(ValueError, match="unknown prompt template 'chatml'; choose one of rwkv, alpaca"):
        render_sft_prompt("Q", "chatml")


def test_text_markers_match_token_positions(tmp_path, byte_tok, world):
    # a binidx file of rendered SFT text, masked by markers, gives the same mask as the sft loader
    prefix = write_binidx(str(tmp_path / "qa"), [byte_tok.encode("User: 1+1?\n\nAssistant: 2")], 256)
    sample = build_dataset(DataConfig(prefix, ctx_len=30, dataload="pad", loss_mask="qa"), byte_tok)[0]
    assert as_list(sample["loss_mask"]) == [0] * 21 + [1, 1, 1] + [0] * 6

    text = "User: a\n\nAssistant: b\n\nUser: c\n\nAssistant: d"
    flags = text_response_flags(byte_tok.encode(text) + [0] + byte_tok.encode("x"), byte_tok)
    reply_bytes = {text.index(" b"), text.index(" b") + 1, text.index(" b") + 2, text.index(" b") + 3,
                   text.index(" d"), text.index(" d") + 1, len(text)}  # " b\n\n", " d", and the eod
    assert [int(f) for f in flags] == [int(i in reply_bytes) for i in range(len(text) + 2)]
    assert [int(f) for f in flags] == reference_reply_flags(text + "\x00x")

    # world tokens: a token is in the reply when all its characters are (the text is ASCII: 1 byte each)
    ids = world.encode(text) + [0]
    char_flags = reference_reply_flags(text + "\x00")
    expected, position = [], 0
    for token in ids:
        piece = world.decode([token]) if token else "\x00"
        expected.append(int(all(char_flags[position:position + len(piece)])))
        position += len(piece)
    assert [int(f) for f in text_response_flags(ids, world)] == expected
    assert world.decode([t for t, f in zip(ids, expected) if f]) == " b\n\n d"


def test_get_sampling_is_deterministic(tmp_path, world):
    texts = [f"Document number {i} says something about {i * i}." for i in range(40)]
    prefix = write_binidx(str(tmp_path / "g"), [world.encode(t) for t in texts], 65536)
    stream = BinIdxReader(prefix).tokens.tolist()

    def make(**overrides):
        fields = dict(ctx_len=16, micro_bsz=2, epoch_steps=5, dataload="get", seed=7)
        fields.update(overrides)
        return build_dataset(DataConfig(prefix, **fields), world)

    first, again = make(), make()
    assert len(first) == 10
    for i in range(len(first)):
        a, b = first[i], again[i]
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["targets"], b["targets"])
        window = as_list(a["input_ids"]) + [as_list(a["targets"])[-1]]
        offsets = [o for o in range(len(stream) - 16) if stream[o:o + 17] == window]
        assert offsets, "a get sample must be a contiguous window of the token stream"
        assert as_list(a["targets"][:-1]) == as_list(a["input_ids"][1:])
        assert as_list(a["loss_mask"]) == [1.0] * 16
    epoch0 = [as_list(first[i]["input_ids"]) for i in range(10)]
    first.set_epoch(1)
    assert [as_list(first[i]["input_ids"]) for i in range(10)] != epoch0
    first.set_epoch(0, skip_samples=4)  # resuming mid-epoch replays the remaining samples
    assert len(first) == 6 and [as_list(first[i]["input_ids"]) for i in range(6)] == epoch0[4:]
    other_rank = make(world_size=2, rank=1)
    assert [as_list(other_rank[i]["input_ids"]) for i in range(10)] != epoch0
    assert [as_list(make(seed=8)[i]["input_ids"]) for i in range(10)] != epoch0
    assert as_list(make(loss_mask="pad")[0]["loss_mask"]) == [1.0] * 16


def matching_offsets(stream, window):
    return [o for o in range(len(stream) - len(window) + 1) if stream[o:o + len(window)] == window]


def test_get_with_qa_masks(tmp_path, byte_tok):
    texts = [f"User: q{i}\n\nAssistant: r{i}" for i in range(20)]
    stream_text = "".join(t + "\x00" for t in texts)
    stream = [ord(c) for c in stream_text]  # ASCII: the byte tokenizer's ids, with "\x00" as the eod 0
    sft = write_jsonl(tmp_path / "s.jsonl", [{"query": f"q{i}", "response": f"r{i}"} for i in range(20)])
    get_qa = dict(ctx_len=12, epoch_steps=60, dataload="get", loss_mask="qa")
    from_positions = build_dataset(DataConfig(sft, data_type="sft", **get_qa), byte_tok)
    whole_stream_flags = reference_reply_flags(stream_text)
    prefix = write_binidx(str(tmp_path / "b"), [byte_tok.encode(t) for t in texts], 256)
    from_markers = build_dataset(DataConfig(prefix, **get_qa), byte_tok)
    assert all(sum(float(d[i]["loss_mask"].sum()) for i in range(len(d))) > 0 for d in (from_positions, from_markers))
    for i in range(len(from_positions)):
        # sft data: the mask is the reply flag of each target in the whole stream
        sample = from_positions[i]
        window = as_list(sample["input_ids"]) + [as_list(sample["targets"])[-1]]
        offsets = matching_offsets(stream, window)
        assert any(as_list(sample["loss_mask"]) == whole_stream_flags[o + 1:o + 13] for o in offsets)
        # binidx text: the same flags, but the window starts in the prompt state
        sample = from_markers[i]
        window = as_list(sample["input_ids"]) + [as_list(sample["targets"])[-1]]
        offsets = matching_offsets(stream, window)
        assert offsets
        expected = reference_reply_flags("".join(chr(t) for t in window))[1:]
        assert as_list(sample["loss_mask"]) == expected


# ----------------------------------------------------------------------------- errors


def test_missing_files(tmp_path, byte_tok):
    with pytest.raises(FileNotFoundError, match="jsonl data file not found: .*nope.jsonl"):
        build_dataset(DataConfig(str(tmp_path / "nope.jsonl"), data_type="jsonl"), byte_tok)
    prefix = write_binidx(str(tmp_path / "half"), [[1, 2]], 256)
    os.remove(prefix + ".idx")
    with pytest.raises(FileNotFoundError, match=r"needs both .*half.bin and .*half.idx; missing: .*half.idx.*"
                                                r"python -m src.data.make_binidx"):
        build_dataset(DataConfig(prefix), byte_tok)


def test_empty_data(tmp_path, byte_tok):
    blank = write_jsonl(tmp_path / "blank.jsonl", ["", "   "])
    with pytest.raises(ValueError, match="blank.jsonl contains no documents"):
        build_dataset(DataConfig(blank, data_type="jsonl"), byte_tok)
    prefix = write_binidx(str(tmp_path / "empty"), [], 256)
    with pytest.raises(ValueError, match="empty contains no documents"):
        build_dataset(DataConfig(prefix), byte_tok)
    only_eod = write_binidx(str(tmp_path / "eod"), [[], []], 256)
    with pytest.raises(ValueError, match="no document of 2 or more tokens, so dataload 'pad' has nothing"):
        build_dataset(DataConfig(only_eod, dataload="pad"), byte_tok)
    with pytest.raises(ValueError, match=r"holds 2 tokens, fewer than the ctx_len\+1 = 513 .*lower --ctx_len"):
        build_dataset(DataConfig(only_eod, dataload="get"), byte_tok)


def test_token_ids_beyond_vocab(tmp_path, world, byte_tok):
    prefix = write_binidx(str(tmp_path / "w"), [world.encode("Hello world")], 65536)
    largest = max(world.encode("Hello world"))
    with pytest.raises(ValueError, match=f"contains token id {largest}, but vocab_size is 256.*--vocab_size.*"
                                         f"make_binidx --tokenizer world"):
        build_dataset(DataConfig(prefix, ctx_len=2), byte_tok)
    with pytest.raises(ValueError, match="contains token id 300, but vocab_size is 256"):
        check_token_range([5, 300, 7], 256)
    with pytest.raises(ValueError, match=r"negative token id \(-1\)"):
        check_token_range(torch.tensor([-1, 2]), 256)
    assert check_token_range(np.array([5, 255]), 256) == 255
    assert check_token_range(BinIdxReader(prefix), 65536) is None  # uint16 always fits 65536: not scanned
    with pytest.raises(ValueError, match="token id 300 does not fit vocab_size 256"):
        write_binidx(str(tmp_path / "x"), [[300]], 256)


def test_bad_json_lines(tmp_path, byte_tok):
    bad = write_jsonl(tmp_path / "bad.jsonl", ['{"text": "ok"}', "", '{"text": nope}'])
    with pytest.raises(ValueError, match="bad.jsonl line 3 is not valid JSON"):
        build_dataset(DataConfig(bad, data_type="jsonl"), byte_tok)
    no_text = write_jsonl(tmp_path / "notext.jsonl", [{"body": "x"}])
    with pytest.raises(ValueError, match=r"notext.jsonl line 1 has no 'text' field \(fields present: 'body'\)"):
        build_dataset(DataConfig(no_text, data_type="jsonl"), byte_tok)
    sft = write_jsonl(tmp_path / "sft.jsonl", [{"query": "a", "response": "b"}, {"query": "c"}])
    with pytest.raises(ValueError, match="sft.jsonl line 2 has no 'response' field.*--sft_field QUERY RESPONSE"):
        build_dataset(DataConfig(sft, data_type="sft"), byte_tok)
    numbers = write_jsonl(tmp_path / "num.jsonl", [{"query": "a", "response": 4}])
    with pytest.raises(ValueError, match="num.jsonl line 1: field 'response' is a int, expected a string"):
        build_dataset(DataConfig(numbers, data_type="sft"), byte_tok)


def test_config_errors(tmp_path, byte_tok):
    with pytest.raises(ValueError, match="unknown data_type 'parquet'; choose one of binidx, jsonl, sft"):
        DataConfig("x", data_type="parquet")
    with pytest.raises(ValueError, match="unknown dataload 'pack'; choose one of get, pad, only"):
        DataConfig("x", dataload="pack")
    with pytest.raises(ValueError, match="unknown loss_mask 'se'; choose one of none, pad, qa"):
        DataConfig("x", loss_mask="se")
    with pytest.raises(ValueError, match="micro_bsz must be 1 \\(got 4\\); use --micro_bsz 1 or --dataload pad"):
        DataConfig("x", dataload="only", micro_bsz=4)
    with pytest.raises(ValueError, match=r"rank 2 must be in \[0, world_size=2\)"):
        DataConfig("x", world_size=2, rank=2)
    with pytest.raises(ValueError, match="ctx_len must be a positive integer"):
        DataConfig("x", ctx_len=0)
    plain = write_binidx(str(tmp_path / "plain"), [byte_tok.encode("just some text")], 256)
    with pytest.raises(ValueError, match="never contain it, so every mask would be zero.*--loss_mask pad"):
        build_dataset(DataConfig(plain, ctx_len=4, loss_mask="qa"), byte_tok)
    with pytest.raises(ValueError, match="pass the tokenizer that made"):
        build_dataset(DataConfig(plain, ctx_len=4, loss_mask="qa"), None, vocab_size=256)
    with pytest.raises(ValueError, match="is tokenized on load: pass a tokenizer"):
        build_dataset(DataConfig(plain, data_type="jsonl"), None, vocab_size=256)


def test_binidx_from_two_conversions_and_a_header_cut_short(tmp_path):
    prefix = write_binidx(str(tmp_path / "a"), [[1, 2, 3], [4, 5]], 256)
    other = write_binidx(str(tmp_path / "b"), [[1, 2, 3], [4, 5], [6, 7, 8, 9]], 256)
    os.replace(other + ".bin", prefix + ".bin")  # a longer .bin from another conversion beside a's index
    with pytest.raises(ValueError, match=r"a.bin holds 24 bytes but its index describes 14 \(7 uint16 tokens\): "
                                         r"the .bin and .idx come from different conversions"):
        BinIdxReader(prefix)
    write_binidx(prefix, [[1, 2, 3], [4, 5]], 256)
    full = open(prefix + ".idx", "rb").read()
    for cut in (0, 5, 20):
        with open(prefix + ".idx", "wb") as handle:
            handle.write(full[:cut])
        with pytest.raises(ValueError, match=f"holds {cut} bytes, fewer than the 34-byte header.*truncated"):
            BinIdxReader(prefix)


def test_non_utf8_jsonl_names_the_file_and_line(tmp_path, byte_tok):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"latin1.jsonl line 2 is not UTF-8 \(byte 0xe9 at byte column 14\)"):
        build_dataset(DataConfig(str(path), data_type="jsonl", ctx_len=4), byte_tok)
    array = tmp_path / "array.json"
    array.write_bytes(b'[{"query": "a", "response": "b"},\n {"query": "\xff", "response": "c"}]')
    with pytest.raises(ValueError, match=r"array.json line 2 is not UTF-8 \(byte 0xff"):
        build_dataset(DataConfig(str(array), data_type="sft", ctx_len=4), byte_tok)


def test_sft_prompts_longer_than_ctx_len_are_refused_with_the_ctx_len_that_fits(tmp_path, byte_tok):
    records = [{"query": "q" * n, "response": "yes"} for n in (30, 40, 50)]
    path = write_jsonl(tmp_path / "long.jsonl", records)
    prompt_tokens = [len(render_sft_prompt("q" * n).encode()) for n in (30, 40, 50)]
    needed = max(prompt_tokens)  # the first reply token is target number len(prompt)
    with pytest.raises(ValueError, match=rf"all 3 samples have no supervised token within --ctx_len 16 .*"
                                         rf"--ctx_len {needed} keeps them all \({min(prompt_tokens)} keeps"):
        build_dataset(DataConfig(path, data_type="sft", dataload="pad", loss_mask="qa", ctx_len=16), byte_tok)
    fits_some = build_dataset(DataConfig(path, data_type="sft", dataload="pad", loss_mask="qa",
                                         ctx_len=prompt_tokens[1]), byte_tok)
    assert (fits_some.unsupervised_docs, fits_some.ctx_len_keeping_all) == (1, needed)
    fits_all = build_dataset(DataConfig(path, data_type="sft", dataload="pad", loss_mask="qa", ctx_len=needed),
                             byte_tok)
    assert fits_all.unsupervised_docs == 0
    fits_all.set_epoch(0)
    assert all(float(fits_all[i]["loss_mask"].sum()) >= 1 for i in range(len(fits_all)))
