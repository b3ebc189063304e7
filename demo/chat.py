"""Chat with an RWKV6 or RWKV-7 checkpoint: a merged model, or a base model plus an adapter merged in memory.

    python demo/chat.py --model merged.pth                        # interactive
    python demo/chat.py --base base.pth --adapter adapter.pth     # merges in memory, then the same
    python demo/chat.py --model base.pth --state state-final.pth  # every conversation starts from a tuned state
    python demo/chat.py --model merged.pth --prompt "Hi" --prompt "And then?"   # one reply per prompt
    printf 'Hi\\nAnd then?\\n' | python demo/chat.py --model merged.pth        # lines on stdin, likewise

Turns use RWKV's chat format "User: {message}\\n\\nAssistant:" (the same text train.py's SFT data renders,
via src.data.render_sft_prompt); a reply ends at a blank line ("\\n\\n"), at the end-of-document token, or
after --max_tokens. The recurrent state is kept between turns, so the model remembers the conversation
(--fresh starts every prompt from an empty state; type /reset in the interactive loop). With --state (a file of
train.py --peft state) the conversation, every --fresh prompt and /reset start from that trained state instead.

Two engines compute the logits; demo/sampling.py turns them into tokens for both, with one seeded
torch.Generator, so a fixed --seed gives the same reply whichever engine runs:
- rwkv:   the `rwkv` pip package's RWKV class (the reference implementation RWKV users run). It reads weights
          from a .pth file, so with --base/--adapter the merged weights are written to a temporary .pth first.
- native: this project's RWKV6 module (src.model) with its WKV op, fed the merged weights directly.
--engine auto picks native for byte-vocabulary models (vocab <= 256, e.g. the offline quickstart's) and
rwkv otherwise.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from demo.sampling import Sampler, SamplingConfig, penalty_exempt_ids
from src.checkpoint.files import save_atomic
from src.checkpoint.io import check_finite_tensors, detect_rwkv_version, load_for_inference, read_checkpoint
from src.model import DTYPES
from src.model.layout import layer_count
from src.peft import read_adapter, read_state_file, to_model_state
from src.peft.merged import serving_weights

TURN_SEPARATOR = "\n\n"
BYTE_VOCAB_MAX = 256


class RwkvPackageEngine:
    """Logits from the `rwkv` pip package's RWKV6 or RWKV-7 (rwkv.model.RWKV, which is its RWKV_x070 class when
    RWKV_V7_ON=1 was set before the first import); main() sets its RWKV_* variables first."""

    name = "rwkv"

    def __init__(self, pth_path, strategy, arch="x060"):
        import rwkv.model

        if hasattr(rwkv.model, "RWKV_x070") != (arch == "x070"):  # the variable is read once, at first import
            raise RuntimeError(f"the rwkv package was imported in this process with RWKV_V7_ON="
                               f"{'1' if arch != 'x070' else 'unset'}, which cannot serve this {arch} model; "
                               f"run the chat in a fresh process")
        if arch == "x070":  # RWKV_x070 takes the path without .pth (it appends it) and has no verbose flag
            self.model = rwkv.model.RWKV(model=str(pth_path)[: -len(".pth")], strategy=strategy)
            self.vocab_size = int(self.model.z["emb.weight"].shape[0])
        else:
            self.model = rwkv.model.RWKV(model=str(pth_path), strategy=strategy, verbose=False)
            self.vocab_size = int(self.model.w["emb.weight"].shape[0])

    def forward(self, tokens, state):
        """Feed tokens (a list of ids) after `state`; the last position's logits (fp32, CPU) and the new state."""
        logits, state = self.model.forward(list(tokens), state)
        return logits.float().cpu(), state

    def initial_state(self, time_states):
        """The package's state list started from per-layer [H, N, N] time states ([head, value, key], as in state
        files), or None where the package itself starts from the time_state keys of the weights (RWKV6: main()
        hands them over in the .pth, and the package loads them with its own transpose)."""
        if not hasattr(self.model, "generate_zero_state"):
            return None
        state = self.model.generate_zero_state()  # RWKV-7: [3i+1] is the WKV state, [head, value, key] already
        for i, tensor in enumerate(time_states):
            state[3 * i + 1] = tensor.to(state[3 * i + 1].device, torch.float32).contiguous()
        return state


class NativeEngine:
    """Logits from this project's RWKV6 (src.model), running its recurrent mode."""

    name = "native"

    def __init__(self, state_dict, device, dtype):
        self.model = load_for_inference(state_dict, "auto", torch.device(device), dtype,
                                        report=lambda note: print(note, file=sys.stderr))
        self.device = device
        self.vocab_size = self.model.config.vocab_size

    @torch.no_grad()
    def forward(self, tokens, state):
        """Feed tokens (a list of ids) after `state`; the last position's logits (fp32, CPU) and the new state."""
        idx = torch.tensor([list(tokens)], dtype=torch.long, device=self.device)
        logits, state = self.model(idx, state=state, return_state=True)
        return logits[0, -1].float().cpu(), state

    def initial_state(self, time_states):
        """The model's one-row state started from per-layer [H, N, N] time states (as in state files)."""
        return to_model_state(self.model, [t.to(self.device) for t in time_states], batch_size=1)


class ChatSession:
    """A conversation: renders each user message as a turn, feeds it, and samples the reply."""

    def __init__(self, engine, tokenizer, sampler, template="rwkv", max_tokens=200, chunk_len=256, fresh=False,
                 initial_state=None):
        if max_tokens <= 0:
            raise ValueError(f"--max_tokens must be positive, got {max_tokens}")
        if chunk_len <= 0:
            raise ValueError(f"--chunk_len must be positive, got {chunk_len}")
        self.engine = engine
        self.tokenizer = tokenizer
        self.sampler = sampler
        self.template = template
        self.max_tokens = max_tokens
        self.chunk_len = chunk_len
        self.fresh = fresh
        self.initial_state = initial_state  # the engine's state to start from (a tuned state), None: zeros
        self.reset()

    def reset(self):
        """Forget the conversation."""
        self.state = list(self.initial_state) if self.initial_state is not None else None

    def _feed(self, ids, state):
        logits = None
        for start in range(0, len(ids), self.chunk_len):
            logits, state = self.engine.forward(ids[start:start + self.chunk_len], state)
        return logits, state

    def reply(self, message, on_text=None) -> str:
        """The assistant's reply to `message`; on_text(new_text) is called as printable text appears."""
        from src.data import render_sft_prompt

        if self.fresh:
            self.reset()
        # A blank line inside the message would read as the end of the user's turn.
        message = "\n".join(line.strip() for line in message.strip().splitlines() if line.strip())
        prompt_ids = self.tokenizer.encode(render_sft_prompt(message, self.template))
        logits, state = self._feed(prompt_ids, self.state)
        self.sampler.start_reply()
        reply_ids, shown = [], 0
        ended_by_separator = False
        text = ""
        while len(reply_ids) < self.max_tokens:
            token = self.sampler.sample(logits)
            if token == self.tokenizer.eod_id:
                break
            self.sampler.observe(token)
            reply_ids.append(token)
            logits, state = self.engine.forward([token], state)
            text = self.tokenizer.decode(reply_ids)
            if TURN_SEPARATOR in text:
                ended_by_separator = True
                break
            if on_text is not None:
                # Hold back trailing newlines (maybe the start of the separator) and cut UTF-8 sequences.
                visible = text.lstrip().rstrip("\n").rstrip("\ufffd")
                if len(visible) > shown:
                    on_text(visible[shown:])
                    shown = len(visible)
        reply = text.split(TURN_SEPARATOR)[0].strip()
        if on_text is not None and len(reply) > shown:
            on_text(reply[shown:])
        if not ended_by_separator and not self.fresh:
            # Close the turn in the state as the chat format does, so the next "User:" follows a blank line.
            _, state = self._feed(self.tokenizer.encode(TURN_SEPARATOR), state)
        self.state = state
        return reply


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_argument_group("model (either --model, or --base with --adapter)")
    source.add_argument("--model", help="an RWKV6 .pth in the official layout (a release, or a merged model)")
    source.add_argument("--base", help="base RWKV6 .pth that --adapter was trained on (merged in memory)")
    source.add_argument("--adapter", help="adapter: train.py's adapter-*.pth, an RWKV-PEFT .pth or an HF peft "
                                          "directory")
    source.add_argument("--state", help="state file written by train.py --peft state: conversations start from it")
    serving = parser.add_argument_group("serving")
    serving.add_argument("--engine", choices=["auto", "rwkv", "native"], default="auto",
                         help="rwkv: the rwkv pip package; native: src.model; auto: native for byte vocabularies")
    serving.add_argument("--tokenizer", choices=["auto", "world", "byte"], default="auto",
                         help="auto: byte when the model's vocabulary has <= 256 ids, world otherwise")
    serving.add_argument("--template", choices=["rwkv", "alpaca"], default="rwkv",
                         help="turn format, as train.py's SFT data renders it")
    serving.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    serving.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default=None,
                         help="weights dtype (default fp32 on CPU, bf16 on CUDA)")
    serving.add_argument("--chunk_len", type=int, default=256, help="prompt tokens fed per forward call")
    sampling = parser.add_argument_group("sampling (demo/sampling.py)")
    sampling.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    sampling.add_argument("--top_p", type=float, default=0.3)
    sampling.add_argument("--presence_penalty", type=float, default=0.5)
    sampling.add_argument("--frequency_penalty", type=float, default=0.5)
    sampling.add_argument("--penalty_decay", type=float, default=0.996)
    sampling.add_argument("--max_tokens", type=int, default=200, help="longest reply, in tokens")
    sampling.add_argument("--seed", type=int, default=42, help="seeds the sampler: same seed, same replies")
    io = parser.add_argument_group("non-interactive mode")
    io.add_argument("--prompt", action="append", default=[],
                    help="a user message (repeatable): print one reply per prompt and exit. Without --prompt, "
                         "lines on stdin are read the same way when stdin is not a terminal")
    io.add_argument("--jsonl", action="store_true", help='print {"prompt", "reply"} JSON lines instead of a transcript')
    io.add_argument("--fresh", action="store_true",
                    help="answer each prompt from an empty state (independent questions) instead of one conversation")
    return parser


def resolve_source(args, parser):
    """The merged weights to serve, as (state_dict, pth_path or None); weights holding NaN or infinity are
    refused (ValueError naming the file and the tensor)."""
    if args.model and (args.base or args.adapter):
        parser.error("give either --model, or --base with --adapter, not both")
    if args.model:
        weights = serving_weights(model_path=args.model)
        check_finite_tensors(weights, f"--model {args.model}")
        return weights, Path(args.model)
    if args.base and args.adapter:
        for flag, path in (("--base", args.base), ("--adapter", args.adapter)):
            if not (Path(path).is_file() or (flag == "--adapter" and Path(path).is_dir())):
                raise FileNotFoundError(f"{flag} {path}: no such file")
        check_finite_tensors(read_checkpoint(args.base), f"--base {args.base}")
        check_finite_tensors(read_adapter(args.adapter)["tensors"], f"--adapter {args.adapter}")
        weights = serving_weights(base_path=args.base, adapter_path=args.adapter)
        check_finite_tensors(weights, "the merged model (--base + --adapter)")
        return weights, None
    if args.base or args.adapter:
        parser.error("--base and --adapter go together: the adapter is merged into the base it was trained on")
    parser.error("no model: pass --model MERGED.pth, or --base BASE.pth --adapter ADAPTER "
                 "(no checkpoint yet? `bash scripts/quickstart.sh` trains a tiny one offline)")


def set_rwkv_package_environment(device, arch="x060"):
    """The `rwkv` package reads these when rwkv.model is first imported: set them before that import.
    arch: 'x060' (RWKV6) or 'x070' (RWKV-7), as src.checkpoint.io.detect_rwkv_version names the weights."""
    use_cuda = device == "cuda"
    os.environ["RWKV_JIT_ON"] = "1" if use_cuda else "0"
    # Its CUDA kernels are compiled on import; without nvcc the package would fail to build them.
    os.environ["RWKV_CUDA_ON"] = "1" if use_cuda and shutil.which("nvcc") else "0"
    # RWKV_V7_ON=1 swaps in the RWKV-7 class, which cannot load an RWKV6 checkpoint (nor RWKV6's class an x070).
    if arch == "x070":
        os.environ["RWKV_V7_ON"] = "1"
    else:
        os.environ.pop("RWKV_V7_ON", None)


def read_time_states(path, state_dict) -> list:
    """The per-layer time states of a state file, checked against the served model's shape."""
    arch = detect_rwkv_version(state_dict)
    heads, size = state_dict["blocks.0.att." + ("r_k" if arch == "x070" else "time_faaaa")].shape
    return read_state_file(path, layer_count(state_dict, arch), heads, size)


def build_engine(args, state_dict, pth_path, device, precision, workdir, time_states=None):
    """The chosen engine; time_states (an RWKV6 state file's tensors) go into the .pth the rwkv package reads."""
    dtype = DTYPES[precision]
    if args.engine == "native":
        return NativeEngine(state_dict, device, dtype)
    if time_states is not None and detect_rwkv_version(state_dict) == "x060":
        state_dict = dict(state_dict, **{f"blocks.{i}.att.time_state": t for i, t in enumerate(time_states)})
        pth_path = None
    if pth_path is None or pth_path.suffix != ".pth":
        # The rwkv package loads weights from a .pth file only: hand it the merged weights through one.
        pth_path = save_atomic(state_dict, Path(workdir) / "merged.pth")
    arch = detect_rwkv_version(state_dict)
    set_rwkv_package_environment(device, arch)
    return RwkvPackageEngine(pth_path, f"{device} {precision}", arch)


UTF8_HINT = "send UTF-8 text (convert other encodings first, e.g. iconv -f latin1 -t utf-8)"


def not_utf8(raw: bytes) -> str:
    """What is wrong with bytes that are not UTF-8 (the first bad byte and where it is)."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return f"byte 0x{raw[error.start]:02x} at position {error.start + 1} is not UTF-8"
    return ""


def read_prompts(args):
    """--prompt values, or the non-empty lines of a piped stdin (None: interactive). Read as bytes, so text that
    is not UTF-8 is refused (ValueError naming the line) before the model loads, whatever the locale."""
    if args.prompt:
        return args.prompt
    if sys.stdin.isatty():
        return None
    prompts = []
    for number, raw in enumerate(sys.stdin.buffer, start=1):
        problem = not_utf8(raw)
        if problem:
            raise ValueError(f"stdin line {number}: {problem}; {UTF8_HINT}")
        line = raw.decode("utf-8").rstrip("\r\n")
        if line.strip():
            prompts.append(line)
    return prompts


def typed_line_problem(message: str) -> str:
    """Why a line typed interactively cannot be sent: bytes that were not UTF-8 reach Python as lone surrogates
    under the C locale (surrogateescape)."""
    try:
        message.encode("utf-8")
    except UnicodeEncodeError:
        try:
            return not_utf8(message.encode("utf-8", "surrogateescape")) or "it is not UTF-8 text"
        except UnicodeEncodeError:
            return "it is not UTF-8 text"
    return ""


def interactive(session):
    print("Chat started: type a message; /reset forgets the conversation, /quit (or Ctrl-D) exits.")
    while True:
        try:
            message = input("\nUser: ")
        except (EOFError, KeyboardInterrupt):
            print()
            return
        except UnicodeDecodeError as error:  # stdin decodes strictly (a UTF-8 locale) and got other bytes
            problem = not_utf8(error.object) or str(error)
        else:
            problem = typed_line_problem(message)
        if problem:
            print(f"(not sent: {problem}; {UTF8_HINT}; type the message again)")
            continue
        if not message.strip():
            continue
        if message.strip() == "/quit":
            return
        if message.strip() == "/reset":
            session.reset()
            print("(conversation reset)")
            continue
        print("\nAssistant: ", end="", flush=True)
        session.reply(message, on_text=lambda text: print(text, end="", flush=True))
        print()


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device: use --device cpu")
    precision = args.precision or ("bf16" if device == "cuda" else "fp32")
    torch.manual_seed(args.seed)
    try:
        prompts = read_prompts(args)
        sampling = SamplingConfig(temperature=args.temperature, top_p=args.top_p,
                                  presence_penalty=args.presence_penalty, frequency_penalty=args.frequency_penalty,
                                  penalty_decay=args.penalty_decay)
        state_dict, pth_path = resolve_source(args, parser)
        vocab_size = int(state_dict["emb.weight"].shape[0])
        tokenizer_name = args.tokenizer if args.tokenizer != "auto" else (
            "byte" if vocab_size <= BYTE_VOCAB_MAX else "world")
        if args.engine == "auto":
            args.engine = "native" if tokenizer_name == "byte" else "rwkv"
        from src.data import get_tokenizer

        tokenizer = get_tokenizer(tokenizer_name)
        if tokenizer.vocab_size > vocab_size:
            raise ValueError(f"the {tokenizer_name} tokenizer has {tokenizer.vocab_size} ids but the model's "
                             f"vocabulary has {vocab_size}: pass --tokenizer byte for byte-level models")
        time_states = read_time_states(args.state, state_dict) if args.state else None
        with tempfile.TemporaryDirectory(prefix="rwkv-chat-") as workdir:
            engine = build_engine(args, state_dict, pth_path, device, precision, workdir, time_states)
        initial_state = engine.initial_state(time_states) if time_states is not None else None
        del state_dict
        sampler = Sampler(sampling, engine.vocab_size, seed=args.seed, exempt_ids=penalty_exempt_ids(tokenizer))
        session = ChatSession(engine, tokenizer, sampler, template=args.template, max_tokens=args.max_tokens,
                              chunk_len=args.chunk_len, fresh=args.fresh, initial_state=initial_state)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"chat: {error}", file=sys.stderr)
        return 2

    if prompts is None:
        interactive(session)
        return 0
    for prompt in prompts:
        reply = session.reply(prompt)
        if args.jsonl:
            print(json.dumps({"prompt": prompt, "reply": reply}, ensure_ascii=False), flush=True)
        else:
            print(f"User: {prompt}\n\nAssistant: {reply}\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
