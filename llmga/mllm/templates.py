"""Chat templates: render an LLMGA conversation to the exact prompt string the model was trained on.

Each template reproduces `Conversation.get_prompt()` of the official code (llmga/llava/conversation.py)
byte for byte, quirks included:

- `llava_v1` and `v1` differ only in the system wording ("human" in the CLIs, "user" in training);
- `llava_llama_2` / `mistral_instruct` wrap the system in `<<SYS>>` even when it is empty, and the
  official `ret.lstrip("<s>")` drops the leading `<s>` (the tokenizer adds BOS);
- `llama_3` uses the *system* header for assistant turns (training used it, so we keep it);
- `qwen_2` puts no newline after `<|im_end|>`;
- `gemma` has no system and appends `<eos>` after every model turn;
- `phi_3` has no system at all (the official Phi3 style ignores it).

A conversation is a sequence of `(user message, assistant reply)` pairs. The last reply may be `None`:
an open generation turn, the prompt then ends where the model starts writing. Replies are the *clean*
text (no stop tokens). The official CLIs write the raw decoded output, stop tokens included, back into
the history, so their multi-turn prompts repeat separators (e.g. `...</s></s>USER:`). We deliberately do
not: a finished reply is rendered the way training rendered it, i.e. what the official `get_prompt`
gives when the history holds the clean reply.

The templates never add, move or strip `<image>`: the official `get_prompt` only rearranges `<image>`
for the Gradio demo's tuple messages, and our messages are plain strings. The caller puts `"<image>\\n"`
at the start of the message that carries the image (see `llmga.mllm.tasks.build_user_message`).
BOS is not part of the prompt text; tokenizers that use one add it.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass

Turn = tuple[str, str | None]

# System prompts, verbatim from llmga/llava/conversation.py.
# conv_vicuna_v1 (the `--version v1` used to train the Vicuna checkpoints).
V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
# conv_llava_v1 (what the official CLIs pick for Vicuna checkpoints).
LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
# conv_llava_llama_2 (legacy LLMGA Llama-2-7B-chat checkpoint).
LLMGA_LLAMA_2_SYSTEM = (
    "You are LLMGA, a useful language and vision generation assistant. You can generate images according to "
    "the user's requirements. If the user wants you to inpaint or outpaint images, please imagine what is in the "
    "black mask parts of the image. If image generation is required, please provide a detailed description of the "
    "generated images in the form of <gen_image> DETAILED DESCRIPTION </gen_image>."
)
# conv_llama_3 (the text after its "<|start_header_id|>system<|end_header_id|>\n\n" prefix).
LLAMA_3_SYSTEM = (
    "You are a helpful language and vision assistant. "
    "You are able to understand the visual content that the user provides, "
    "and assist the user with a variety of tasks using natural language."
)
# conv_qwen_2 (the text after its "<|im_start|>system\n" prefix).
QWEN_2_SYSTEM = (
    "A conversation between a user and an LLM-based AI assistant. The assistant gives helpful and honest answers."
)


def _render_two(system: str, turns: Sequence[Turn]) -> str:
    """SeparatorStyle.TWO (Vicuna): roles USER/ASSISTANT, sep " ", sep2 "</s>"."""
    out = system + " "
    for user, reply in turns:
        out += f"USER: {user} "
        out += "ASSISTANT:" if reply is None else f"ASSISTANT: {reply}</s>"
    return out


def _render_llama_2(system: str, turns: Sequence[Turn]) -> str:
    """SeparatorStyle.LLAMA_2: `[INST] ... [/INST]` rounds joined by "<s>", replies closed by " </s>".

    The system block goes into the first user message; the leading "<s>" is dropped, as the official
    `ret.lstrip("<s>")` does (the prompt always starts with "<s>[INST]", so only that "<s>" goes).
    """
    out = ""
    for i, (user, reply) in enumerate(turns):
        if i == 0:
            user = f"<<SYS>>\n{system}\n<</SYS>>\n\n{user}"
        else:
            out += "<s>"
        out += f"[INST] {user} [/INST]"
        if reply is not None:
            out += f" {reply} </s>"
    return out


def _render_llama_3(system: str, turns: Sequence[Turn]) -> str:
    """SeparatorStyle.LLAMA_3: header + text + "<|eot_id|>"; the assistant header says "system"."""
    user_header = "<|start_header_id|>user<|end_header_id|>\n\n"
    assistant_header = "<|start_header_id|>system<|end_header_id|>\n\n"  # sic: official roles[1]
    out = assistant_header + system + "<|eot_id|>"
    for user, reply in turns:
        out += user_header + user + "<|eot_id|>"
        out += assistant_header if reply is None else assistant_header + reply + "<|eot_id|>"
    return out


def _render_qwen_2(system: str, turns: Sequence[Turn]) -> str:
    """SeparatorStyle.QWEN2: ChatML without the newline after "<|im_end|>"."""
    out = "<|im_start|>system\n" + system + "<|im_end|>"
    for user, reply in turns:
        out += "<|im_start|>user\n" + user + "<|im_end|>"
        out += "<|im_start|>assistant\n" + ("" if reply is None else reply + "<|im_end|>")
    return out


def _render_gemma(system: str, turns: Sequence[Turn]) -> str:
    """SeparatorStyle.GEMMA: sep "" after user turns, sep2 "<eos>" after model turns; the system is ""."""
    out = system
    for user, reply in turns:
        out += f"<start_of_turn>user\n{user}<end_of_turn>\n"
        out += "<start_of_turn>model\n" + ("" if reply is None else f"{reply}<end_of_turn>\n<eos>")
    return out


def _render_phi_3(system: str, turns: Sequence[Turn]) -> str:
    """SeparatorStyle.Phi3: "<|user|>\\n...<|end|>\\n"; the official style never emits the system."""
    del system  # ignored by the official Phi3 style
    out = ""
    for user, reply in turns:
        out += f"<|user|>\n{user}<|end|>\n"
        out += "<|assistant|>\n" + ("" if reply is None else f"{reply}<|end|>\n")
    return out


_RENDERERS: dict[str, Callable[[str, Sequence[Turn]], str]] = {
    "two": _render_two,
    "llama_2": _render_llama_2,
    "llama_3": _render_llama_3,
    "qwen_2": _render_qwen_2,
    "gemma": _render_gemma,
    "phi_3": _render_phi_3,
}


@dataclass(frozen=True)
class ChatTemplate:
    """One conversation template.

    name: the official `conv_templates` key.
    stop_strings: text that ends an assistant turn (the separator the template writes after a reply);
        generation should also stop at the tokenizer's EOS id.
    system: the system prompt (unused by `phi_3`).
    style: which official `SeparatorStyle` layout is reproduced (a key of the internal renderer table).
    """

    name: str
    stop_strings: tuple[str, ...]
    system: str
    style: str

    def render(self, turns: Sequence[tuple[str, str | None]]) -> str:
        """Render `(user message, assistant reply)` pairs to the prompt string.

        Only the last reply may be `None` (open turn: the prompt ends with the assistant header).
        An empty reply "" counts as finished (header, nothing, separator); the official `if message:`
        would treat it as open and glue the next turn onto the header.
        Raises ValueError on an empty conversation, an empty user message or a `None` reply before the end.
        """
        if not turns:
            raise ValueError("render() got no turns: pass at least one (user message, reply or None) pair.")
        for i, (user, reply) in enumerate(turns):
            if not user:
                raise ValueError(f"Turn {i} has an empty user message: every turn needs the user's text.")
            if reply is None and i != len(turns) - 1:
                raise ValueError(
                    f"Turn {i} has no reply but is not the last turn: only the last turn may be open (None)."
                )
        return _RENDERERS[self.style](self.system, turns)


# Stop strings: the separator each official template writes after an assistant reply.
# (The official CLIs compute `stop_str` but never pass it to generate(); for LLAMA_2 style their
# `stop_str` is sep "<s>", while the reply actually ends with sep2 "</s>" — we use "</s>".)
_TEMPLATES: dict[str, ChatTemplate] = {
    t.name: t
    for t in (
        ChatTemplate("llava_v1", ("</s>",), LLAVA_V1_SYSTEM, "two"),
        ChatTemplate("v1", ("</s>",), V1_SYSTEM, "two"),
        ChatTemplate("llava_llama_2", ("</s>",), LLMGA_LLAMA_2_SYSTEM, "llama_2"),
        ChatTemplate("mistral_instruct", ("</s>",), "", "llama_2"),
        ChatTemplate("llama_3", ("<|eot_id|>",), LLAMA_3_SYSTEM, "llama_3"),
        ChatTemplate("qwen_2", ("<|im_end|>",), QWEN_2_SYSTEM, "qwen_2"),
        # Gemma replies end "<end_of_turn>\n<eos>" (the official CLI cuts those 19 characters).
        ChatTemplate("gemma", ("<end_of_turn>", "<eos>"), "", "gemma"),
        ChatTemplate("phi_3", ("<|end|>",), "", "phi_3"),
    )
}

TEMPLATE_NAMES: tuple[str, ...] = tuple(_TEMPLATES)


def get_template(name: str) -> ChatTemplate:
    """The template called `name` (one of TEMPLATE_NAMES); ValueError listing the known names otherwise."""
    try:
        return _TEMPLATES[name]
    except KeyError:
        raise ValueError(f"Unknown chat template {name!r}; known templates: {', '.join(TEMPLATE_NAMES)}.") from None


# Llama-3 tokenizers have 128256 entries; Llama-2/Vicuna have 32000.
_LLAMA_3_MIN_VOCAB = 128000
# Special tokens only Llama-3's tokenizer has (its template's turn end and role header).
LLAMA_3_TOKENS = ("<|eot_id|>", "<|start_header_id|>")
# The official CLIs' folder-name rule for llava_llama checkpoints (serve/cli*.py, tested in this order; their last
# resort, llava_v0, is no LLMGA template: Vicuna's llava_v1 stands in for it).
_LLAMA_NAME_RULE = (("llama-2", "llava_llama_2"), ("llama3", "llama_3"))


def template_for(model_type: str, vocab_size: int, chat_template: str | None, *, tokens: Container[str] = (),
                 name: str = "") -> str:
    """Default template name for a checkpoint, from its config and tokenizer.

    model_type: `config.model_type` (`llava_llama`, `llava_mistral`, `llava_Qwen2`, `llava_Phi3`, `llava_gemma`).
    vocab_size: `config.vocab_size`. chat_template: the tokenizer's own `chat_template` text, if any.
    tokens: the tokenizer's vocabulary (token strings, e.g. `tokenizer.get_vocab()`). name: the checkpoint's name
    (`LLMGACheckpoint.name`, the folder's).

    `llava_llama` is Vicuna, Llama-2-chat or Llama-3, told apart by, in order: Llama-3's special tokens in the
    tokenizer (LLAMA_3_TOKENS), a Llama-3-sized vocabulary, "[INST]" in the chat template (Llama-2-chat), and as the
    last resort the official CLIs' folder-name rule ("llama-2", "llama3"), else Vicuna. The other families follow
    from model_type. The official CLIs pick every template by substrings of the folder name ("llama3", "qwen2",
    "v1", ...), which breaks as soon as a folder is renamed; facts stored in the checkpoint come first here.
    Vicuna maps to `llava_v1` (the CLIs' choice) rather than `v1` (training wording); `v1` stays selectable.
    Raises ValueError for a model_type that is not an LLMGA one.
    """
    kind = model_type.lower()
    if kind == "llava_mistral":
        return "mistral_instruct"
    if kind == "llava_qwen2":
        return "qwen_2"
    if kind == "llava_phi3":
        return "phi_3"
    if kind == "llava_gemma":
        return "gemma"
    if kind == "llava_llama":
        if all(token in tokens for token in LLAMA_3_TOKENS) or vocab_size >= _LLAMA_3_MIN_VOCAB:
            return "llama_3"
        if chat_template is not None and "[INST]" in chat_template:
            return "llava_llama_2"
        return next((template for part, template in _LLAMA_NAME_RULE if part in name.lower()), "llava_v1")
    raise ValueError(
        f"No chat template for model_type {model_type!r}: LLMGA checkpoints have model_type llava_llama, "
        "llava_mistral, llava_Qwen2, llava_Phi3 or llava_gemma. Check that this is an LLMGA checkpoint, "
        "or choose a template by name."
    )
