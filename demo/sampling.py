"""Next-token sampling shared by every serving path of the chat demo (the `rwkv` package and our own RWKV6).

Both paths hand this module a vector of logits; everything random goes through one `torch.Generator` seeded by
the caller, so a fixed `--seed` gives the same reply whichever engine computed the logits.

The controls are RWKV's usual chat settings:
- temperature: logits are divided by it; 0 means greedy (argmax, no random draw).
- top_p (nucleus): sampling keeps the smallest set of most likely tokens whose probability reaches top_p.
- presence / frequency penalties with decay: a token already generated in this reply loses
  `presence + frequency * count` from its logit; after each step every count is multiplied by `decay`,
  so old repetitions are forgiven slowly. Tokens made only of digits and whitespace are exempt (arithmetic
  repeats digits legitimately; RWKV's own pipeline exempts them too).
- the end-of-document token (id 0) is banned for the first `ban_eod_steps` steps so a reply is never empty;
  after that, sampling it ends the reply.
"""
from dataclasses import dataclass
from typing import Iterable, Optional

import torch


@dataclass
class SamplingConfig:
    """How to turn logits into a token. Defaults are ChatRWKV's chat defaults."""

    temperature: float = 1.0
    top_p: float = 0.3
    presence_penalty: float = 0.5
    frequency_penalty: float = 0.5
    penalty_decay: float = 0.996
    ban_eod_steps: int = 1
    eod_id: int = 0

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}; use 1 to disable nucleus sampling")
        if self.presence_penalty < 0 or self.frequency_penalty < 0:
            raise ValueError("presence_penalty and frequency_penalty must be >= 0 (0 disables them)")
        if not 0 <= self.penalty_decay <= 1:
            raise ValueError(f"penalty_decay must be in [0, 1], got {self.penalty_decay}")
        if self.ban_eod_steps < 0:
            raise ValueError(f"ban_eod_steps must be >= 0, got {self.ban_eod_steps}")


def penalty_exempt_ids(tokenizer) -> list:
    """Ids of tokens whose text is only digits and whitespace: repetition penalties skip them."""
    exempt = []
    for token_id in range(tokenizer.vocab_size):
        if token_id == tokenizer.eod_id:
            continue
        try:
            text = tokenizer.decode_bytes([token_id]).decode("utf-8")
        except UnicodeDecodeError:
            continue  # a partial UTF-8 sequence is neither a digit nor whitespace
        if text and all(ch.isspace() or ch in "0123456789" for ch in text):
            exempt.append(token_id)
    return exempt


class Sampler:
    """Samples one reply token by token: `sample(logits)` then `observe(token)` for each generated token.

    Call `start_reply()` before each reply: penalties count the tokens of the current reply only.
    """

    def __init__(self, config: SamplingConfig, vocab_size: int, seed: int = 0,
                 exempt_ids: Optional[Iterable[int]] = None):
        self.config = config
        self.vocab_size = vocab_size
        self.generator = torch.Generator().manual_seed(seed)
        self.penalised = torch.ones(vocab_size, dtype=torch.bool)
        if exempt_ids is not None:
            self.penalised[torch.as_tensor(list(exempt_ids), dtype=torch.long)] = False
        self.start_reply()

    def start_reply(self):
        """Forget the previous reply's tokens (penalties and the end-of-document ban start over)."""
        self.counts = torch.zeros(self.vocab_size, dtype=torch.float64)
        self.present = torch.zeros(self.vocab_size, dtype=torch.bool)
        self.step = 0

    def adjusted_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """float64 logits after the end-of-document ban and the repetition penalties."""
        if logits.dim() != 1 or logits.numel() != self.vocab_size:
            raise ValueError(f"expected logits of shape [{self.vocab_size}], got {tuple(logits.shape)}")
        cfg = self.config
        adjusted = logits.detach().to(device="cpu", dtype=torch.float64).clone()
        if self.step < cfg.ban_eod_steps:
            adjusted[cfg.eod_id] = float("-inf")
        penalty = cfg.presence_penalty * self.present.to(torch.float64) + cfg.frequency_penalty * self.counts
        return adjusted - penalty * self.penalised

    def sample(self, logits: torch.Tensor) -> int:
        """One token id drawn from `logits` (1-D, the model's last position)."""
        adjusted = self.adjusted_logits(logits)
        cfg = self.config
        if cfg.temperature == 0:
            return int(torch.argmax(adjusted))
        probs = torch.softmax(adjusted / cfg.temperature, dim=-1)
        sorted_probs, sorted_ids = torch.sort(probs, descending=True, stable=True)
        cumulative = torch.cumsum(sorted_probs, dim=-1)
        # Keep a token while the mass before it is still short of top_p: the smallest nucleus reaching top_p.
        keep = (cumulative - sorted_probs) < cfg.top_p
        keep[0] = True
        nucleus = torch.where(keep, sorted_probs, torch.zeros_like(sorted_probs))
        nucleus_cdf = torch.cumsum(nucleus, dim=-1)
        draw = torch.rand((), generator=self.generator, dtype=torch.float64) * nucleus_cdf[-1]
        position = int(torch.searchsorted(nucleus_cdf, draw, right=True).clamp(max=int(keep.sum()) - 1))
        return int(sorted_ids[position])

    def observe(self, token_id: int):
        """Record a generated token: decay the old counts, then count this one."""
        self.counts *= self.config.penalty_decay
        self.counts[token_id] += 1.0
        self.present[token_id] = True
        self.step += 1
