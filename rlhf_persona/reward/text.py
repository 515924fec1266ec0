"""Turning (persona, prompt, reply) into token ids the reward model can learn from.

Two facts about the embedded MiniLM tokenizer shape this module: it maps every emoji to
``[UNK]`` and it treats a newline as plain whitespace. Users' tastes are partly *about* emoji and
line structure, so a reward model that cannot see them cannot learn them. ``InputFormat`` probes
the tokenizer once and, only for what it would lose, rewrites the text first: each emoji becomes
a word the vocabulary knows (" smiley ") and each line break a visible separator (" | "). Bullet
dashes, "!" and "?" survive BERT's tokenizer as they are. A byte-level tokenizer (the embedded
policy's, most decoders) loses nothing and gets the text unchanged.

Encoders get the prompt and reply as a text pair (``[CLS] prompt [SEP] reply [SEP]``); decoders
get one string ending in EOS, so the last token (which a decoder's sequence-classification head
reads) is the same for every row. A persona (prefix strategy) follows as a part of its own.
The reward model is fed these pre-tokenized ids: TRL's RewardTrainer would otherwise append an
EOS token that BERT does not have.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from rlhf_persona import styles

# Corpus emoji plus the common emoji blocks (a hub policy's emoji count too).
EMOJI_RE = re.compile(
    "[" + "".join(styles.EMOJI) + "\U0001f300-\U0001faff\u2600-\u27bf\u2b50\u2764]\ufe0f?"
)
EMOJI_WORDS = ("smiley", "emoji", "smile")
NEWLINE_MARK = " | "


@dataclass(frozen=True)
class InputFormat:
    """How texts are rewritten and joined for one tokenizer (saved with the model)."""

    emoji_word: str | None = None  # replacement for each emoji, None: keep emoji as they are
    newline_mark: str | None = None  # replacement for line breaks, None: keep them
    text_pair: bool = True  # encoder-style (prompt, reply) pair; False: one string + EOS

    @classmethod
    def for_tokenizer(cls, tokenizer) -> InputFormat:
        """Probe ``tokenizer`` for what it would lose and rewrite exactly that."""
        unk = tokenizer.unk_token_id
        emoji_ids = tokenizer(styles.EMOJI[0], add_special_tokens=False)["input_ids"]
        emoji_word = None
        if unk is not None and (not emoji_ids or unk in emoji_ids):
            vocab = tokenizer.get_vocab()
            emoji_word = next((w for w in EMOJI_WORDS if w in vocab), EMOJI_WORDS[0])
        lines = tokenizer("a\nb", add_special_tokens=False)["input_ids"]
        flat = tokenizer("a b", add_special_tokens=False)["input_ids"]
        newline_mark = NEWLINE_MARK if lines == flat else None
        text_pair = tokenizer.sep_token is not None and tokenizer.cls_token is not None
        return cls(emoji_word, newline_mark, text_pair)

    def to_dict(self) -> dict:
        return asdict(self)

    def normalize(self, text: str) -> str:
        """The text as the tokenizer should see it (see the module docstring)."""
        if self.emoji_word:
            text = EMOJI_RE.sub(f" {self.emoji_word} ", text)
        if self.newline_mark:
            text = text.replace("\n", self.newline_mark)
        return text

    def encode(
        self, tokenizer, prompts: Sequence[str], replies: Sequence[str], max_length: int = 128
    ) -> list[list[int]]:
        """Token ids per (prompt, reply) row, truncated to ``max_length`` (longest part first
        for text pairs)."""
        firsts = [self.normalize(p) for p in prompts]
        seconds = [self.normalize(r) for r in replies]
        if self.text_pair:
            enc = tokenizer(firsts, seconds, truncation="longest_first", max_length=max_length)
            return [list(ids) for ids in enc["input_ids"]]
        eos = tokenizer.eos_token_id
        texts = [f"{a}\n{b}" for a, b in zip(firsts, seconds, strict=True)]
        enc = tokenizer(texts, truncation=True, max_length=max_length - (eos is not None))
        return [list(ids) + ([eos] if eos is not None else []) for ids in enc["input_ids"]]

    def encode_persona(self, tokenizer, text: str, max_length: int = 64) -> list[int]:
        """Ids of a persona text, to append to a row's ids: a sequence of its own for encoders
        (``[CLS] persona [SEP]``), a final line ending in EOS for decoders. A long persona keeps
        its end (a segment card ends with the traits its users reward)."""
        side = tokenizer.truncation_side
        tokenizer.truncation_side = "left"
        try:
            if self.text_pair:
                enc = tokenizer(self.normalize(text), truncation=True, max_length=max_length)
                return list(enc["input_ids"])
            eos = tokenizer.eos_token_id
            ids = tokenizer(
                "\n" + self.normalize(text), add_special_tokens=False, truncation=True,
                max_length=max_length - 1,
            )["input_ids"]  # fmt: skip
            return list(ids) + ([eos] if eos is not None else [])
        finally:
            tokenizer.truncation_side = side
