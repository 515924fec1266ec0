"""Run under `accelerate launch --multi_gpu --num_processes 2`: PPO on tiny-test, data parallel.

Each process writes rank.json: its rank, the world size, the prompts it trained on and a hash of
its LoRA + value-head weights after training (equal on every rank when DDP averaged gradients).
Then train_policies (DPO) runs on both processes; only the main one may save.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch
from datasets import Dataset

from rlhf_persona import distributed
from rlhf_persona.config import PolicyConfig
from rlhf_persona.policy import ALGORITHMS, train_policies
from rlhf_persona.policy.common import load_base
from rlhf_persona.policy.ppo_trainer import PPOTrainer
from rlhf_persona.policy.train import _format

SPEC = "embedded:tiny-test"
PROMPTS = [f"Tell me about topic {i}." for i in range(16)]


def reward(prompts, completions, segment_id, **_):
    return [-len(c) / 20 for c in completions]


def main(out: Path) -> None:
    torch.set_num_threads(1)
    rows = Dataset.from_list([{"prompt": p, "segment_id": 0} for p in PROMPTS])
    model, tok = load_base(SPEC)
    cfg = PolicyConfig(algorithm="ppo", steps=2, batch_size=4, ppo={"max_completion_length": 8})
    rows = _format(rows, ALGORITHMS.get("ppo"), tok)
    trainer = PPOTrainer(model, tok, rows, cfg, device="cpu",
                             bf16=False, seed=0, reward_fn=reward)  # fmt: skip
    seen = [[m[-1]["content"] for m in trainer._batch(step)["prompt"]] for step in range(2)]
    trainer.train()
    trained = [p for n, p in trainer.module.named_parameters() if p.requires_grad]
    digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in trained))
    dpo = PolicyConfig(steps=1, batch_size=2, max_length=64, train_global=False)
    pairs = Dataset.from_list(
        [{"prompt": p, "chosen": "Sure 😀", "rejected": "No.", "segment_id": 0} for p in PROMPTS]
    )
    reg = train_policies(dpo, SPEC, pairs, {}, out / "registry")
    record = {
        "rank": distributed.rank(),
        "world": distributed.world_size(),
        "main": distributed.is_main(),
        "seen": seen,
        "weights": digest.hexdigest(),
        "log": trainer.state.log_history,
        "adapters": sorted(reg.adapters),
    }
    (out / f"rank{distributed.rank()}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
