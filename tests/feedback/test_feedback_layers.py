"""The package layers: ``feedback`` is storage only (no model, no web framework), ``serving``
(chat generation) builds on it, ``api`` (the FastAPI app) on both; never the other way round."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import rlhf_persona

PACKAGE = Path(rlhf_persona.__file__).parent
MODELS = ("torch", "transformers", "trl", "peft", "datasets")
WEB = ("fastapi", "starlette", "uvicorn")
# package -> what its modules may not import, at module level or inside a function
FORBIDDEN = {
    "feedback": (
        "rlhf_persona.api", "rlhf_persona.serving", "rlhf_persona.policy", "rlhf_persona.reward",
        "rlhf_persona.segmentation", "rlhf_persona.loop", "torch", "transformers", *WEB,
    ),
    "serving": ("rlhf_persona.api",),
}  # fmt: skip


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_no_module_imports_from_a_layer_above_it():
    wrong = []
    for package, forbidden in FORBIDDEN.items():
        for path in sorted((PACKAGE / package).rglob("*.py")):
            for name in sorted(_imports(path)):
                if any(name == f or name.startswith(f + ".") for f in forbidden):
                    wrong.append(f"{path.relative_to(PACKAGE.parent)} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_importing_every_feedback_module_loads_no_model_or_web_library():
    # A fresh interpreter: what the store's modules pull in at import time.
    code = f"""
import importlib, json, pkgutil, sys
import rlhf_persona.feedback as pkg
names = [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")
         if ".migrations" not in m.name]
for name in names:
    importlib.import_module(name)
loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set({list(MODELS + WEB)!r}))
print(json.dumps({{"modules": names, "loaded": loaded}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.splitlines()[-1])
    assert "rlhf_persona.feedback.store" in result["modules"]
    assert "rlhf_persona.feedback.tables" in result["modules"]
    assert result["loaded"] == []


def test_the_store_resources_do_not_import_the_facade():
    # FeedbackStore binds the resource modules; they work on a StoreSession, so no circle.
    resources = ["session", "users", "replies", "ingest", "events", "segments", "keys"]
    wrong = [
        name
        for name in resources
        if "rlhf_persona.feedback.store" in _imports(PACKAGE / "feedback" / f"{name}.py")
    ]
    assert wrong == []
