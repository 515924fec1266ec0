"""What makes an adapter folder travel: a portable base-model reference, the tokenizer with its
chat template, and a filled model card (``README.md``, Hugging Face format).

PEFT records the folder the base model was loaded from (``base_model_name_or_path``); for an
embedded model or a local folder that is an absolute path on the training machine. It is
rewritten to the spec the user gave (a hub id, ``embedded:NAME``) or to a path relative to the
adapter folder, so ``PeftModel.from_pretrained`` / ``AutoPeftModelForCausalLM`` work elsewhere.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from rlhf_persona.config import PolicyConfig

CARD = "README.md"


def portable_base(spec: str, adapter_dir: Path) -> str:
    """The base model as a hub id, an ``embedded:`` spec or a path relative to ``adapter_dir``."""
    local = Path(spec).expanduser()
    if not spec.startswith("embedded:") and local.is_dir():
        return os.path.relpath(local.resolve(), adapter_dir.resolve())
    return spec


def fix_base_reference(adapter_dir: Path, spec: str) -> str:
    """Rewrite ``adapter_config.json``'s ``base_model_name_or_path`` to ``portable_base``."""
    path = adapter_dir / "adapter_config.json"
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = portable_base(spec, adapter_dir)
    path.write_text(json.dumps(config, indent=2, sort_keys=True))
    return config["base_model_name_or_path"]


def _load_snippet(base: str) -> str:
    if base.startswith("embedded:"):
        return (
            "from peft import PeftModel\n"
            "from rlhf_persona.models import load_causal_lm\n\n"
            f'base, tokenizer = load_causal_lm("{base}")  # built by rlhf_persona (no hub copy)\n'
            'model = PeftModel.from_pretrained(base, "PATH/TO/THIS/FOLDER")'
        )
    return (
        "from peft import AutoPeftModelForCausalLM\n"
        "from transformers import AutoTokenizer\n\n"
        'model = AutoPeftModelForCausalLM.from_pretrained("PATH/TO/THIS/FOLDER")\n'
        'tokenizer = AutoTokenizer.from_pretrained("PATH/TO/THIS/FOLDER")  # + chat template'
    )


def _metrics_table(metrics: dict) -> str:
    rows = [(k, v) for k, v in sorted(metrics.items()) if isinstance(v, int | float)]
    if not rows:
        return "(no metrics logged)"
    body = "\n".join(f"| {k} | {v:.4g} |" for k, v in rows)
    return f"| metric (last logged step) | value |\n|---|---|\n{body}"


def write_card(adapter_dir: Path, info, cfg: PolicyConfig, cards: dict[int, str], round: int,
               system_prompts: dict[int, str] | None = None) -> Path:  # fmt: skip
    """``README.md`` for one trained adapter (``info``: its ``AdapterInfo``)."""
    from huggingface_hub import ModelCard, ModelCardData

    base = portable_base(info.base_model, adapter_dir)
    hub_base = None if base.startswith("embedded:") or Path(base).parts[:1] == ("..",) else base
    data = ModelCardData(
        base_model=hub_base,
        library_name="peft",
        pipeline_tag="text-generation",
        tags=["rlhf_persona", "trl", cfg.algorithm, "lora", "personalization"],
    )
    personas = "\n".join(
        f"- **segment {s}** ({'persona' if s in cards else 'no card'}): {cards.get(s, '—')}"
        for s in info.segments
    )
    prompts = "\n".join(f"- segment {s}: {t}" for s, t in (system_prompts or {}).items() if t)
    served = f"\nSystem prompts this adapter is served with:\n\n{prompts}\n" if prompts else ""
    text = f"""---
{data.to_yaml()}
---

# {info.name}: a {cfg.algorithm.upper()} LoRA adapter of rlhf_persona, round {round}

Trained on the feedback of the users of segment(s) {", ".join(map(str, info.segments))}.

- **Base model**: `{base}`
- **Data**: {info.data_size} training rows ({cfg.algorithm} format) from those users' feedback
- **Training**: {info.steps} steps in {info.train_s:.1f} s; LoRA r={cfg.lora_r},
  alpha={cfg.lora_alpha}; beta={cfg.beta}; learning rate {cfg.learning_rate}
- **Strategy**: `{cfg.strategy}`

## Segments and personas

{personas}
{served}
## Metrics

{_metrics_table(info.metrics)}

## Use

The tokenizer and its chat template are saved beside the adapter.

```python
{_load_snippet(base)}
```
"""
    path = adapter_dir / CARD
    ModelCard(text).save(path)
    return path
