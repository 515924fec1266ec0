"""The reward backbone: any encoder or decoder as a one-output sequence classifier.

``load_backbone`` resolves a model spec (``embedded:minilm``, a hub id, a path) and loads it with
``AutoModelForSequenceClassification`` (``num_labels=1``): a BERT gets a pooler + linear head, a
Llama a linear ``score`` over the last token. The same code path serves every spec.

``prepare_backbone`` makes the reward stage affordable on a CPU without changing what the model
computes: it freezes the embeddings and the first N transformer layers (no gradients flow through
them); for BERT-style encoders ``CachedFrozenStack`` runs each distinct input through the frozen
part only once per fit or score call (the same reply is seen in many pairs, under many
segments), and ``FirstTokenLayer`` evaluates the last layer at the [CLS] position only, the one
output a BERT classifier reads.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from rlhf_persona.errors import UserError

log = logging.getLogger(__name__)


def resolve_spec(spec: str, cache_dir: str | Path | None = None) -> Path | str:
    """A loadable folder for ``spec`` (embedded models are built / found in the cache)."""
    from rlhf_persona.models import resolve_model_path

    try:
        return resolve_model_path(spec, cache_dir=cache_dir)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to resolve is the user's spec
        raise UserError(f"reward model spec {spec!r} cannot be resolved: {exc}") from None


def load_backbone(spec: str, cache_dir: str | Path | None = None, from_config: bool = False):
    """(sequence-classification model with one output, tokenizer with a pad token) for ``spec``.

    ``from_config`` builds the architecture without reading weights (they are loaded after).
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from rlhf_persona.quiet import expected_load_report, quiet_loading

    quiet_loading()
    path = resolve_spec(spec, cache_dir) if not Path(str(spec)).is_dir() else Path(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        if from_config:
            config = AutoConfig.from_pretrained(path, num_labels=1)
            model = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
        else:
            with expected_load_report():  # the new one-output head is "missing": by design
                model = AutoModelForSequenceClassification.from_pretrained(
                    path, num_labels=1, dtype=torch.float32
                )
    except Exception as exc:  # noqa: BLE001 - report which spec failed and why, not a traceback
        raise UserError(
            f"reward model spec {spec!r} ({path}) cannot be loaded as a sequence classifier: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise UserError(f"reward model spec {spec!r}: tokenizer has neither pad nor eos token")
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    with torch.no_grad():  # weights mapped from a file can sit at unaligned addresses, where
        for param in model.parameters():  # CPU kernels round differently: own aligned copies
            param.data = param.data.clone()  # make scores reproducible after save / load
    return model, tokenizer


def transformer_layers(model) -> nn.ModuleList:
    """The stack of transformer blocks of a BERT-, Llama- or GPT-style model."""
    base = model.base_model
    for path in ("encoder.layer", "layers", "h", "transformer.layer"):
        node = base
        for part in path.split("."):
            node = getattr(node, part, None)
        if isinstance(node, nn.ModuleList):
            return node
    raise UserError(
        f"reward.freeze_layers: cannot find the transformer layers of {type(model).__name__}"
    )


def score_head(model) -> tuple[nn.Module, str, nn.Linear]:
    """(parent module, attribute name, linear layer) of the model's one-output reward head."""
    for name, module in reversed(list(model.named_modules())):
        if isinstance(module, nn.Linear) and module.out_features == 1:
            parent_name, _, attr = name.rpartition(".")
            return model.get_submodule(parent_name), attr, module
    raise UserError(f"{type(model).__name__}: no one-output linear reward head found")


class FrozenStore:
    """Frozen-stack outputs shared by every model with the same frozen weights in a process.

    ``global``, ``heads``, ``lora`` and ``prefix`` reward models on one encoder see the same
    (prompt, reply) texts: the frozen layers run once per text for all of them. Entries are
    dropped all at once when ``max_tokens`` is exceeded.
    """

    def __init__(self, max_tokens: int):
        self.max_tokens = max_tokens
        self.states: dict[tuple[int, ...], torch.Tensor] = {}
        self.tokens = 0

    def add(self, key: tuple[int, ...], value: torch.Tensor) -> None:
        if self.tokens + len(key) > self.max_tokens:
            self.clear()
        self.states[key] = value
        self.tokens += len(key)

    def clear(self) -> None:
        self.states.clear()
        self.tokens = 0


_STORES: dict[tuple, FrozenStore] = {}
STORE_TOKENS = 2_000_000  # ~3 GB of float32 states at hidden size 384


class CachedFrozenStack(nn.Module):
    """Embeddings + the frozen bottom layers of a BERT-style encoder, memoized per sequence.

    Stands in for the encoder's ``embeddings`` module and returns the hidden states after the
    frozen layers. Rows are right-padded; a row may hold several parts, each starting with
    ``split_token_id`` ([CLS]): the (prompt, reply) text, then e.g. a persona. Each part goes
    through the frozen layers on its own, one sequence at a time, so its states depend only on
    its ids, never on the batch it came in (the scores are exactly reproducible), and are kept
    in a process-wide ``FrozenStore`` keyed by the ids.
    """

    def __init__(self, embeddings, layers, pad_token_id: int, split_token_id, width: int):
        super().__init__()
        self.embeddings = embeddings
        self.frozen_layers = nn.ModuleList(layers)
        self.pad_token_id = pad_token_id
        self.split_token_id = split_token_id
        self.width = width
        self._store: FrozenStore | None = None
        self._top_kv: tuple[nn.Linear, nn.Linear] | None = None  # not submodules: no state

    def emit_keys_values(self, key: nn.Linear, value: nn.Linear) -> None:
        """Also emit the next layer's (frozen) keys and values: output ``[h | key(h) |
        value(h)]``, read by a ``FirstTokenLayer(kv_in_input=True)``."""
        self._top_kv = (key, value)
        self._store = None

    @property
    def store(self) -> FrozenStore:
        """The shared store for these frozen weights (looked up on first use, after loading)."""
        if self._store is None:
            params = [p.detach().flatten()[:4096] for p in self.parameters()]
            for linear in self._top_kv or ():
                params += [p.detach().flatten()[:4096] for p in linear.parameters()]
            fingerprint = float(torch.cat(params).double().sum()) if params else 0.0
            key = (len(self.frozen_layers), self.width, self._top_kv is not None, fingerprint)
            self._store = _STORES.setdefault(key, FrozenStore(STORE_TOKENS))
        return self._store

    def parts(self, row: list[int]) -> list[tuple[int, ...]]:
        """The row's parts: split before every ``split_token_id`` after the first token."""
        cuts = [0] + [i for i in range(1, len(row)) if row[i] == self.split_token_id]
        return [tuple(row[a:b]) for a, b in zip(cuts, cuts[1:] + [len(row)], strict=True)]

    def forward(self, input_ids=None, token_type_ids=None, position_ids=None, **kwargs):
        if input_ids is None or token_type_ids is not None or position_ids is not None:
            raise ValueError("CachedFrozenStack takes input_ids only (no token types / positions)")
        lengths = (input_ids != self.pad_token_id).sum(1).tolist()
        rows = [self.parts(row[:n]) for row, n in zip(input_ids.tolist(), lengths, strict=True)]
        states = self.store.states
        for part in {p for parts in rows for p in parts if p not in states}:
            self.store.add(part, self._compute(part))
        seqs = [states[p[0]] if len(p) == 1 else torch.cat([states[x] for x in p]) for p in rows]
        out = nn.utils.rnn.pad_sequence(seqs, batch_first=True)  # zeros where padded
        missing = input_ids.shape[1] - out.shape[1]
        return nn.functional.pad(out, (0, 0, 0, missing)) if missing > 0 else out

    @torch.no_grad()
    def _compute(self, ids: tuple[int, ...]) -> torch.Tensor:
        device = self.embeddings.word_embeddings.weight.device
        h = self.embeddings(input_ids=torch.tensor([ids], dtype=torch.long, device=device))
        for layer in self.frozen_layers:
            h = layer(h)
            h = h[0] if isinstance(h, tuple) else h
        if self._top_kv is not None:
            h = torch.cat([h, self._top_kv[0](h), self._top_kv[1](h)], dim=-1)
        return h[0]

    def clear(self) -> None:
        self.store.clear()


class FirstTokenLayer(nn.Module):
    """A BERT layer evaluated at the first ([CLS]) position only.

    A BERT sequence classifier reads nothing of its last layer but the [CLS] output (the pooler
    takes ``hidden[:, 0]``), so computing the query, attention output and feed-forward for the
    other positions is wasted work: this wrapper gives the identical [CLS] output (keys and
    values still come from every token) at a fraction of the cost, and returns ``[B, 1, H]``.

    With ``kv_in_input`` the input is ``[h | keys | values]`` (a ``CachedFrozenStack`` that
    emits this layer's frozen keys and values), so the per-token work is done once per text;
    ``add_kv_delta(r)`` then adds trainable rank-``r`` corrections ``B·A·h`` to those keys and
    values (``B`` starts at zero: the output is unchanged until trained).
    """

    def __init__(self, layer: nn.Module, kv_in_input: bool = False):
        super().__init__()
        self.layer = layer
        self.kv_in_input = kv_in_input
        self.kv_delta: nn.ModuleDict | None = None

    def add_kv_delta(self, rank: int) -> None:
        width = self.layer.attention.self.query.in_features
        self.kv_delta = nn.ModuleDict()
        for name in ("key", "value"):
            down = nn.Linear(width, rank, bias=False)
            up = nn.Linear(rank, width, bias=False)
            nn.init.zeros_(up.weight)
            self.kv_delta[name] = nn.Sequential(down, up)

    def forward(self, hidden_states, attention_mask=None, *args, **kwargs):
        attn = self.layer.attention.self
        batch, length, _ = hidden_states.shape
        heads, size = attn.num_attention_heads, attn.attention_head_size
        if self.kv_in_input:
            hidden_states, k, v = hidden_states.chunk(3, dim=-1)
            if self.kv_delta is not None:
                k = k + self.kv_delta["key"](hidden_states)
                v = v + self.kv_delta["value"](hidden_states)
        else:
            k, v = attn.key(hidden_states), attn.value(hidden_states)
        first = hidden_states[:, :1]
        q = attn.query(first).view(batch, 1, heads, size).transpose(1, 2)
        k = k.reshape(batch, length, heads, size).transpose(1, 2)
        v = v.reshape(batch, length, heads, size).transpose(1, 2)
        mask = attention_mask
        if mask is not None and mask.dim() == 4:
            mask = mask[:, :, :1, :]
        p = attn.dropout.p if attn.training else 0.0
        ctx = nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=p, scale=attn.scaling
        )
        ctx = ctx.transpose(1, 2).reshape(batch, 1, heads * size)
        out = self.layer.attention.output(ctx, first)
        return self.layer.output(self.layer.intermediate(out), out)


def _reads_first_token(model) -> bool:
    """A BERT-style classifier: pooler over [CLS], layers with query/key/value attention."""
    base = model.base_model
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    return (
        not getattr(model.config, "is_decoder", False)
        and getattr(base, "pooler", None) is not None
        and isinstance(layers, nn.ModuleList)
        and len(layers) > 0
        and all(hasattr(layers[-1].attention.self, a) for a in ("query", "key", "value"))
    )


def _supports_cache(model) -> bool:
    base = model.base_model
    return (
        not getattr(model.config, "is_decoder", False)
        and hasattr(base, "embeddings")
        and hasattr(getattr(base, "embeddings", None), "word_embeddings")
        and isinstance(getattr(getattr(base, "encoder", None), "layer", None), nn.ModuleList)
    )


def prepare_backbone(
    model,
    n_layers: int,
    cache: bool,
    split_token_id: int | None = None,
    freeze_top_kv: bool = False,
    top_kv_rank: int = 0,
) -> dict:
    """Freeze the embeddings and the first ``n_layers`` layers, memoize them (``cache``, BERT-
    style encoders) and evaluate a BERT classifier's last layer at [CLS] only.

    ``freeze_top_kv``: when exactly one (first-token) layer stays trainable, freeze its keys and
    values too and compute them with the cached frozen part: each step then costs a few
    [CLS]-sized products instead of a pass over every token; ``top_kv_rank`` > 0 gives them a
    trainable low-rank correction back (cheap: rank-r products per token).

    Returns what was done: ``{"frozen_layers", "total_layers", "cached", "first_token_top",
    "top_kv_frozen"}``.
    """
    layers = transformer_layers(model)
    total = len(layers)
    n = min(n_layers, total)
    first_token = _reads_first_token(model)
    if first_token and n < total:  # a frozen last layer lives inside the cached stack instead
        layers[-1] = FirstTokenLayer(layers[-1])
    info = {"frozen_layers": n, "total_layers": total, "cached": False, "top_kv_frozen": False}
    info["first_token_top"] = first_token and n < total
    if n == 0:
        return info
    model.get_input_embeddings().requires_grad_(False)
    base = model.base_model
    if hasattr(base, "embeddings"):
        base.embeddings.requires_grad_(False)
    for layer in layers[:n]:
        layer.requires_grad_(False)
    info["cached"] = cache and _supports_cache(model)
    if cache and not info["cached"]:
        log.info("reward: frozen-layer cache needs a BERT-style encoder; running uncached")
    if info["cached"]:
        pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
        frozen = list(layers[:n])
        base.embeddings = CachedFrozenStack(
            base.embeddings, frozen, pad, split_token_id, model.config.hidden_size
        )
        base.encoder.layer = nn.ModuleList(list(layers[n:]))
        if freeze_top_kv and info["first_token_top"] and n == total - 1:
            top = base.encoder.layer[0]
            attn = top.layer.attention.self
            attn.key.requires_grad_(False)
            attn.value.requires_grad_(False)
            base.embeddings.emit_keys_values(attn.key, attn.value)
            top.kv_in_input = True
            if top_kv_rank > 0:
                top.add_kv_delta(top_kv_rank)
            info["top_kv_frozen"] = True
            info["top_kv_rank"] = top_kv_rank
    return info


def frozen_cache(model) -> CachedFrozenStack | None:
    """The model's CachedFrozenStack, if ``freeze_bottom`` installed one."""
    for module in model.modules():
        if isinstance(module, CachedFrozenStack):
            return module
    return None
