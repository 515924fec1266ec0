"""A saved reward model that travels: a model card, and where the strategy allows a plain
``AutoModelForSequenceClassification`` beside the project's own format.

During training the backbone carries speed-ups that are not transformers modules of their own:
the frozen bottom memoized in a ``CachedFrozenStack``, a last layer evaluated at [CLS] only
(``FirstTokenLayer``), and low-rank corrections of its keys and values. None of them changes
what the model computes, so for the strategies whose score is the backbone's one output
(``global``; ``prefix`` when its persona part is not run through a cached frozen bottom on its
own) the weights map back onto the stock architecture: renamed, with the key/value corrections
folded into the key/value weights. ``export_classifier`` writes that model to ``RM_DIR/hf/``;
``heads`` and ``lora`` (and cached ``prefix``) load with ``load_reward_model`` only.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

HF_DIR = "hf"
CARD = "README.md"
_STACK = re.compile(r"(^|\.)embeddings\.embeddings\.")
_FROZEN = re.compile(r"(^|\.)embeddings\.frozen_layers\.(\d+)\.")
_LAYER = re.compile(r"(^|\.)encoder\.layer\.(\d+)\.(layer\.)?")
_DELTA = re.compile(r"(^|\.)encoder\.layer\.(\d+)\.kv_delta\.(key|value)\.([01])\.weight$")


def exportable(rm) -> str | None:
    """Why ``rm`` has no plain-transformers form (None: it has one)."""
    if rm.strategy == "global":
        return None
    if rm.strategy == "prefix" and not rm.backbone_.get("cached"):
        return None
    if rm.strategy == "prefix":
        return (
            "the persona text goes through the cached frozen layers as a sequence of its own, "
            "which a stock model cannot reproduce (reward.cache_frozen: false exports)"
        )
    return f"the {rm.strategy} strategy adds per-segment parts a stock classifier lacks"


def plain_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The training model's weights under the stock architecture's names (see module doc)."""
    frozen = {int(m.group(2)) for k in state if (m := _FROZEN.search(k))}
    shift = max(frozen) + 1 if frozen else 0
    out: dict[str, torch.Tensor] = {}
    deltas: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if m := _DELTA.search(key):
            deltas.setdefault((int(m.group(2)) + shift, m.group(3)), {})[m.group(4)] = value
            continue
        key = _STACK.sub(r"\1embeddings.", key)
        if _FROZEN.search(key):  # the frozen bottom layers keep their numbers
            key = _FROZEN.sub(lambda m: f"{m.group(1)}encoder.layer.{m.group(2)}.", key)
        else:  # the trainable top ones follow them (a FirstTokenLayer's .layer is unwrapped)
            key = _LAYER.sub(lambda m: f"{m.group(1)}encoder.layer.{int(m.group(2)) + shift}.", key)
        out[key] = value
    for (layer, name), parts in deltas.items():  # k = W h + B A h  →  W' = W + B A
        suffix = f"encoder.layer.{layer}.attention.self.{name}.weight"
        target = next(k for k in out if k.endswith(suffix))
        out[target] = out[target] + parts["1"] @ parts["0"]
    return out


def export_classifier(rm, directory: Path) -> Path | None:
    """Write ``directory/hf/``: the reward model as a stock sequence classifier + tokenizer."""
    if exportable(rm) is not None or not rm.cfg.export_plain:
        return None
    from transformers import AutoModelForSequenceClassification

    config = rm._backbone_config()
    model = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
    model.load_state_dict(plain_state_dict(rm.model_.state_dict()), strict=True)
    out = Path(directory) / HF_DIR
    model.save_pretrained(out)
    rm.tokenizer_.save_pretrained(out)
    return out


def _usage(rm, hf: bool) -> str:
    if not hf:
        return (
            "```python\nfrom rlhf_persona.reward import load_reward_model\n\n"
            'rm = load_reward_model("PATH/TO/THIS/FOLDER")\n'
            "scores = rm.score(segment_ids, prompts, replies)  # one float per row\n```"
        )
    fmt = rm.format_
    steps = []
    if fmt.emoji_word:
        steps.append(f'each emoji replaced by " {fmt.emoji_word} "')
    if fmt.newline_mark:
        steps.append(f'each line break replaced by "{fmt.newline_mark}"')
    rewrite = "; ".join(steps) or "nothing"
    call = ("tok(prompt, reply, truncation=True, max_length=MAX, return_token_type_ids=False, "
            'return_tensors="pt")' if fmt.text_pair else
            'tok(prompt + "\\n" + reply + tok.eos_token, truncation=True, max_length=MAX, '
            'return_tensors="pt")')  # fmt: skip
    persona = ""
    if rm.strategy == "prefix":
        persona = ("\n# prefix strategy: append the segment's persona as a part of its own:\n"
                   "# ids = ids + tok(persona)['input_ids'] (see personas above)\n")  # fmt: skip
    return f"""Plain transformers (folder `hf/`; texts rewritten first: {rewrite}; MAX =
{rm.cfg.max_length}; no token type ids, as in training):

```python
from transformers import AutoModelForSequenceClassification, AutoTokenizer

tok = AutoTokenizer.from_pretrained("PATH/TO/THIS/FOLDER/hf")
model = AutoModelForSequenceClassification.from_pretrained("PATH/TO/THIS/FOLDER/hf")
inputs = {call}{persona}
score = model(**inputs).logits[0, 0]
```

Or with the project: `rlhf_persona.reward.load_reward_model("PATH/TO/THIS/FOLDER")`."""


def write_card(rm, directory: Path, hf: bool) -> Path:
    """``README.md``: strategy, encoder, segments and personas, data, accuracy, how to load."""
    stats = getattr(rm, "stats_", {})
    personas = "\n".join(f"- **segment {s}**: {t}" for s, t in sorted(rm.personas_.items()))
    phases = "\n".join(
        f"| {p.get('phase')} | {p.get('pairs')} | {p.get('steps')} | {p.get('loss')} | "
        f"{p.get('final_accuracy')} |"
        for p in stats.get("phases", [])
    )
    why = exportable(rm) or (None if rm.cfg.export_plain else "reward.export_plain is off")
    text = f"""---
library_name: transformers
pipeline_tag: text-classification
tags: [rlhf_persona, trl, reward-model, {rm.strategy}]
---

# Reward model ({rm.strategy} strategy) of rlhf_persona

Scores (segment, prompt, reply) with one float: higher = users of that segment like the reply
more. Trained with TRL's RewardTrainer on {stats.get("pairs", "?")} preference pairs
(per segment: {json.dumps(stats.get("pairs_per_segment", {}))}) on the encoder
`{rm.encoder_spec}`; trained segments: {rm.segments_ or "none (one global model)"}.

## Segments and personas

{personas or "(no persona texts)"}

## Training phases

| phase | pairs | steps | loss | last accuracy |
|---|---|---|---|---|
{phases}

## Use

{_usage(rm, hf)}
{"" if why is None else f"{chr(10)}No plain-transformers copy: {why}.{chr(10)}"}"""
    path = Path(directory) / CARD
    path.write_text(text)
    return path
