"""Prompt templates for instruction (SFT) data, shared by training and evaluation.

Training renders `render_sft_prompt(query) + render_sft_response(response)` followed by the end-of-document
token; evaluation renders the prompt only and lets the model write the response, so both see the same text.

- "rwkv": RWKV's chat format, `User: {query}\\n\\nAssistant:` with the response after one space.
- "alpaca": the Alpaca-style instruction prompt MetaMathQA trains and evaluates with; the response follows
  the `### Response:\\n` line directly.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class SftTemplate:
    """How one template renders a prompt and a response, and the markers that delimit turns in rendered text.

    `user_marker` starts a prompt and `assistant_marker` ends it (the assistant cue); loss masks built from
    text (binidx/jsonl data) train on what lies between an assistant cue and the next user marker or the end
    of the document.
    """

    name: str
    prompt_format: str
    response_prefix: str
    user_marker: str
    assistant_marker: str

    def render_prompt(self, query):
        return self.prompt_format.format(query=query)

    def render_response(self, response):
        return self.response_prefix + response


ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)

TEMPLATES = {
    "rwkv": SftTemplate(
        name="rwkv",
        prompt_format="User: {query}\n\nAssistant:",
        response_prefix=" ",
        user_marker="User:",
        assistant_marker="Assistant:",
    ),
    "alpaca": SftTemplate(
        name="alpaca",
        prompt_format=ALPACA_PREAMBLE + "\n\n### Instruction:\n{query}\n\n### Response:\n",
        response_prefix="",
        user_marker=ALPACA_PREAMBLE,
        assistant_marker="### Response:\n",
    ),
}


def get_template(name):
    """The SftTemplate called `name` ("rwkv" or "alpaca")."""
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown prompt template {name!r}; choose one of {', '.join(TEMPLATES)}") from None


def render_sft_prompt(query, template="rwkv"):
    """Prompt text up to and including the assistant cue, e.g. "User: 1+1?\\n\\nAssistant:" for "rwkv"."""
    return get_template(template).render_prompt(query)


def render_sft_response(response, template="rwkv"):
    """Response text as it follows the prompt: " {response}" for "rwkv", "{response}" for "alpaca"."""
    return get_template(template).render_response(response)
