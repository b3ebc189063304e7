"""Batched greedy decoding for RWKV6: prompts in parallel over time, then one recurrent step per new token.

How a batch is decoded (`greedy_generate`):

1. Prompt phase (`prefill`). An RNN must not see padding, so prompts of different lengths are never padded:
   all prompts start from the zero state together, and the batch runs "in steps of a staircase" -- the
   first forward call covers every prompt up to the shortest length, then the prompts that ended leave the
   batch (their state and last logits are kept) and the rest continue from their state up to the next
   shortest length, and so on. Every prompt token goes through exactly one full-sequence (time-parallel)
   forward call, with no padding; long segments are split in time so that one call holds at most
   `prefill_tokens` (rows x time) positions of logits.
2. Step phase. The recurrent states of all running sequences form one batch; each step feeds every sequence
   its last chosen token (one position) and takes the argmax of the logits (greedy). Memory stays constant
   whatever the generation length. A sequence that finishes leaves the batch at once (its state rows are
   dropped); when half the batch has finished, waiting prompts are prefilled and join it (continuous
   batching; refilling at half rather than after every finish keeps the state copies rare).
3. A sequence finishes on the end-of-document token (`eod_id`, 0 in both our vocabularies; it is not part of
   the output), on a stop string (the text is cut before it; the tokens that spelled it are kept in
   `tokens`), or after `max_new_tokens` tokens.

Stop strings per prompt template (`template_stop_strings`): the fine-tuned model ends its answer with the eod
token it was trained with; the stop strings catch a model that instead starts the next turn.
- "rwkv": "\\n\\nUser:" -- the next user turn. A bare "\\n\\n" (RWKV chat's usual stop) is not used because
  MetaMathQA's MATH answers contain blank lines before "The answer is", and our SFT data keeps them.
- "alpaca": "### Instruction", "### Response" and the Alpaca preamble "Below is an instruction" -- the start
  of another Alpaca section (MetaMath's own evaluation stops on "Instruction:" / "Response:" likewise).
"""
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from src.model import concat_states, select_state

TEMPLATE_STOP_STRINGS = {
    "rwkv": ("\n\nUser:",),
    "alpaca": ("### Instruction", "### Response", "Below is an instruction"),
}


def template_stop_strings(template: str) -> tuple:
    """The stop strings used with a prompt template ("rwkv" or "alpaca"); see the module docstring."""
    try:
        return TEMPLATE_STOP_STRINGS[template]
    except KeyError:
        raise ValueError(
            f"no stop strings known for template {template!r}; choose one of {', '.join(TEMPLATE_STOP_STRINGS)}"
        ) from None


@dataclass
class DecodeConfig:
    """Greedy decoding settings.

    max_new_tokens: generation limit per prompt. batch_size: sequences stepped together.
    eod_id: end-of-document token that ends an answer (None: never stop on a token).
    stop_strings: texts that end an answer. prefill_tokens: most prompt positions (rows x time) per forward
    call in the prompt phase; it bounds the [rows, time, vocab] logits the model materialises.
    """

    max_new_tokens: int = 512
    batch_size: int = 32
    eod_id: Optional[int] = 0
    stop_strings: Sequence[str] = ()
    prefill_tokens: int = 8192

    def __post_init__(self):
        for name in ("max_new_tokens", "batch_size", "prefill_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"DecodeConfig.{name} must be a positive integer, got {value!r}")
        if any(not isinstance(stop, str) or not stop for stop in self.stop_strings):
            raise ValueError(f"DecodeConfig.stop_strings must be non-empty strings, got {list(self.stop_strings)!r}")


@dataclass
class Generation:
    """One decoded answer: generated ids (eod excluded), its text (cut before a stop string), and why it ended
    ("eod", "stop" or "length")."""

    tokens: list = field(default_factory=list)
    text: str = ""
    finish_reason: str = ""


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def _check_prompts(prompts) -> None:
    for index, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f"prompt {index} has no tokens; a recurrent model needs at least one token to "
                             "predict from (render the prompt with its template first)")


@torch.inference_mode()
def prefill(model, prompts: Sequence[Sequence[int]], prefill_tokens: int = 8192, initial_state=None):
    """Run token-id prompts of any lengths from the zero state (or from `initial_state`, a one-row state such as
    a state-tuned one, src.peft.load_state_for) without padding.

    Returns (logits [B, vocab] float32 at each prompt's last position, state after each prompt), both in the
    order of `prompts`; the state is what `model(..., return_state=True)` returns, batch row b for prompt b.
    """
    _check_prompts(prompts)
    if not prompts:
        raise ValueError("prefill needs at least one prompt")
    device = _model_device(model)
    rows = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # still running, shortest first
    finished_order, finished_logits, finished_states = [], [], []
    state = concat_states([initial_state] * len(rows)) if initial_state is not None else None
    position = 0
    while rows:
        target = len(prompts[rows[0]])
        chunk = max(1, prefill_tokens // len(rows))
        while position < target:
            end = min(target, position + chunk)
            ids = torch.tensor([prompts[i][position:end] for i in rows], dtype=torch.long, device=device)
            logits, state = model(ids, state=state, return_state=True)
            position = end
        n_done = sum(1 for i in rows if len(prompts[i]) == target)
        done = torch.arange(n_done, device=device)
        finished_order += rows[:n_done]
        finished_logits.append(logits[:n_done, -1].float())
        finished_states.append(select_state(state, done))
        rows = rows[n_done:]
        if rows:
            state = select_state(state, torch.arange(n_done, n_done + len(rows), device=device))
    logits = torch.cat(finished_logits, dim=0)
    state = concat_states(finished_states) if len(finished_states) > 1 else finished_states[0]
    # finished_order[k] is the prompt in row k; put prompt b back in row b.
    inverse = torch.empty(len(prompts), dtype=torch.long)
    inverse[torch.tensor(finished_order)] = torch.arange(len(prompts))
    inverse = inverse.to(device)
    return logits[inverse], select_state(state, inverse)


def _token_bytes_function(tokenizer) -> Callable[[int], bytes]:
    """id -> the bytes of its text (cached), from the tokenizer's decode_bytes or decode."""
    cache = {}

    def token_bytes(token_id):
        if token_id not in cache:
            if hasattr(tokenizer, "decode_bytes"):
                cache[token_id] = bytes(tokenizer.decode_bytes([token_id]))
            else:
                cache[token_id] = tokenizer.decode([token_id]).encode("utf-8")
        return cache[token_id]

    return token_bytes


class _Answer:
    """A sequence being generated: its ids, the bytes of its text, and where a stop string was found."""

    def __init__(self, stop_bytes):
        self.tokens = []
        self.text_bytes = bytearray()
        self.stop_bytes = stop_bytes
        self.stop_at = None

    def append(self, token_id, token_bytes) -> None:
        searched_up_to = len(self.text_bytes)
        self.tokens.append(token_id)
        self.text_bytes += token_bytes
        for stop in self.stop_bytes:
            # only where the new bytes could complete a stop string
            found = self.text_bytes.find(stop, max(0, searched_up_to - len(stop) + 1))
            if found >= 0 and (self.stop_at is None or found < self.stop_at):
                self.stop_at = found

    def result(self, finish_reason) -> Generation:
        end = self.stop_at if self.stop_at is not None else len(self.text_bytes)
        text = bytes(self.text_bytes[:end]).decode("utf-8", errors="replace")
        return Generation(tokens=self.tokens, text=text, finish_reason=finish_reason)


@torch.inference_mode()
def greedy_generate(model, prompts: Sequence[Sequence[int]], tokenizer, config: DecodeConfig,
                    progress: Optional[Callable[[int, int], None]] = None, initial_state=None) -> list:
    """Greedy answers (list of Generation, in prompt order) to token-id prompts; see the module docstring.
    initial_state: the one-row state every prompt starts from (None: zeros), e.g. a state-tuned one.

    tokenizer turns generated ids into text (for stop strings and `Generation.text`). progress, if given, is
    called as progress(n_finished, n_total) each time a sequence finishes.
    """
    _check_prompts(prompts)
    device = _model_device(model)
    token_bytes = _token_bytes_function(tokenizer)
    stop_bytes = [stop.encode("utf-8") for stop in config.stop_strings]
    results = [None] * len(prompts)
    waiting = deque(range(len(prompts)))
    running, answers = [], {}  # running[row] = prompt index of batch row `row`
    logits = state = None
    n_finished = 0
    while waiting or running:
        if waiting and len(running) <= config.batch_size // 2:
            joining = [waiting.popleft() for _ in range(min(config.batch_size - len(running), len(waiting)))]
            new_logits, new_state = prefill(model, [prompts[i] for i in joining], config.prefill_tokens,
                                            initial_state)
            if running:
                logits = torch.cat([logits, new_logits], dim=0)
                state = concat_states([state, new_state])
            else:
                logits, state = new_logits, new_state
            running += joining
            answers.update((i, _Answer(stop_bytes)) for i in joining)

        chosen = logits.argmax(dim=-1).tolist()
        keep = []
        for row, (index, token_id) in enumerate(zip(running, chosen)):
            answer = answers[index]
            if config.eod_id is not None and token_id == config.eod_id:
                reason = "eod"
            else:
                answer.append(token_id, token_bytes(token_id))
                if answer.stop_at is not None:
                    reason = "stop"
                elif len(answer.tokens) >= config.max_new_tokens:
                    reason = "length"
                else:
                    keep.append(row)
                    continue
            results[index] = answers.pop(index).result(reason)
            n_finished += 1
            if progress is not None:
                progress(n_finished, len(prompts))

        if len(keep) < len(running):
            running = [running[row] for row in keep]
            if keep:
                state = select_state(state, torch.tensor(keep, device=device))
        if running:
            step_ids = torch.tensor([[chosen[row]] for row in keep], dtype=torch.long, device=device)
            step_logits, state = model(step_ids, state=state, return_state=True)
            logits = step_logits[:, -1].float()
        else:
            logits = state = None
    return results
