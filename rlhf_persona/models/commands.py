"""``rlhf-persona models ...``: build, inspect and sample models (embedded or hub)."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Build, inspect and sample models (embedded or hub).", no_args_is_help=True)
console = Console()

CacheOption = typer.Option(
    None, "--cache-dir", help="Cache folder (default $RLHF_PERSONA_CACHE or ~/.cache/rlhf_persona)."
)
DEFAULT_PROMPTS = (
    "Can you help me with garlic?",
    "Any tips on budget for finance?",
    "How do I get started with gardening?",
)


@app.command("build")
def build_cmd(
    specs: list[str] | None = typer.Argument(
        None, help="Embedded policies to build (default: embedded:tiny-test embedded:tiny)."
    ),
    cache_dir: str | None = CacheOption,
) -> None:
    """Build embedded policies (or find them in the cache) and report time, size and path."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from rlhf_persona.models import build

    table = Table("spec", "cache", "seconds", "parameters", "path")
    for spec in specs or ["embedded:tiny-test", "embedded:tiny"]:
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as bar:
            task = bar.add_task(f"{spec}: corpus, tokenizer, SFT", total=None)

            def advance(done: int, total: int, task=task, bar=bar) -> None:
                bar.update(task, completed=done, total=total)

            result = build(spec, cache_dir, advance)
        hit = "hit" if result.cache_hit else "built"
        table.add_row(
            spec, hit, f"{result.seconds:.1f}", f"{result.parameters:,}", str(result.path)
        )
    console.print(table)


@app.command("show")
def show(
    spec: str = typer.Argument(..., help="Model spec: embedded:NAME, hub id or local folder."),
    cache_dir: str | None = CacheOption,
) -> None:
    """Print a model's parameters, size on disk and folder (builds embedded ones if missing)."""
    from rlhf_persona.models import model_info

    info = model_info(spec, cache_dir)
    info["parameters"] = f"{info['parameters']:,}"
    for key, value in info.items():
        console.print(f"{key}: {value}", highlight=False)


@app.command("sample")
def sample(
    spec: str = typer.Argument("embedded:tiny", help="Chat policy spec."),
    prompts: list[str] | None = typer.Option(
        None, "--prompt", "-p", help="User prompt (repeatable; default: three example prompts)."
    ),
    n: int = typer.Option(3, "-n", min=1, help="Replies per prompt."),
    system: str | None = typer.Option(None, help="System message, e.g. a persona description."),
    temperature: float = typer.Option(1.0, min=0.0, help="Sampling temperature; 0 is greedy."),
    max_new_tokens: int = typer.Option(96, min=1, help="Longest reply, in tokens."),
    seed: int = typer.Option(0, help="Sampling seed."),
    cache_dir: str | None = CacheOption,
) -> None:
    """Print sample replies of a chat policy to a few prompts."""
    from rlhf_persona.models import load_causal_lm
    from rlhf_persona.models.sampling import sample_replies

    model, tokenizer = load_causal_lm(spec, cache_dir)
    prompts = prompts or list(DEFAULT_PROMPTS)
    replies = sample_replies(
        model,
        tokenizer,
        prompts,
        n=n,
        temperature=temperature,
        system=system,
        max_new_tokens=max_new_tokens,
        seed=seed,
    )
    for prompt, outs in zip(prompts, replies, strict=True):
        console.rule(f"[bold]{prompt}")
        for i, reply in enumerate(outs, 1):
            console.print(f"[dim]{i}.[/dim] {reply}", highlight=False)
