"""``medtune import healthgpt``: HealthGPT's released weights as a medtune model folder (issue 16 point 4).

    medtune import healthgpt --lm /models/Phi-3-mini-4k-instruct --vision /models/clip-vit-large-patch14-336 \\
        --hlora com_hlora_weights.bin [--gen-hlora gen_hlora_weights.bin --fusion fusion_layer_weights.bin] \\
        --out /models/healthgpt-m3-medtune
    medtune run -c configs/healthgpt-m3.yaml model.path=/models/healthgpt-m3-medtune

A bad input (a missing file or folder, a ``.bin`` outside the release's key layout, a vision folder that is no CLIP
model ...) is one line naming the option and the path, exit 2, nothing written. The converter is
:mod:`components.models.healthgpt`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines.cli_common import console, fail

import_app = typer.Typer(help="Import released model weights as a medtune model folder.", no_args_is_help=True)


@import_app.command("healthgpt")
def healthgpt(
    lm: Annotated[Path, typer.Option("--lm", help="Phi-3-mini folder (microsoft/Phi-3-mini-4k-instruct, local).")],
    vision: Annotated[
        Path, typer.Option("--vision", help="CLIP ViT-L/14-336 folder (openai/clip-vit-large-patch14-336).")
    ],
    hlora: Annotated[Path, typer.Option("--hlora", help="The release's com_hlora_weights.bin (comprehension plugin).")],
    out: Annotated[Path, typer.Option("--out", help="The medtune model folder to write (must not exist).")],
    gen_hlora: Annotated[
        Path | None, typer.Option("--gen-hlora", help="gen_hlora_weights.bin (generation plugin; needs --fusion).")
    ] = None,
    fusion: Annotated[
        Path | None, typer.Option("--fusion", help="fusion_layer_weights.bin (with --gen-hlora).")
    ] = None,
    alpha: Annotated[
        float | None, typer.Option("--alpha", help="The release's hlora_alpha of --hlora (default 2 x total rank).")
    ] = None,
    gen_alpha: Annotated[
        float | None, typer.Option("--gen-alpha", help="hlora_alpha of --gen-hlora (default 2 x total rank).")
    ] = None,
    vq_codes: Annotated[
        int | None, typer.Option("--vq-codes", help="vq_idx_nums when no file holds the vocabulary (default 8192).")
    ] = None,
    dtype: Annotated[
        str, typer.Option("--dtype", help="auto (every tensor exact) | float32 | bfloat16 | float16.")
    ] = "auto",
) -> None:
    """Convert HealthGPT's released H-LoRA weights (HealthGPT-M3) into a medtune model folder."""
    from components.models.healthgpt import HealthGPTImportError, import_healthgpt

    if dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise fail(2, f"error: --dtype {dtype}: choose auto, float32, bfloat16 or float16")

    def say(line: str) -> None:
        console.print(line, markup=False)

    try:
        info = import_healthgpt(
            lm=lm, vision=vision, hlora=hlora, out=out, gen_hlora=gen_hlora, fusion=fusion, alpha=alpha,
            gen_alpha=gen_alpha, vq_codes=vq_codes, dtype=dtype, progress=say,
        )  # fmt: skip
    except HealthGPTImportError as e:
        raise fail(2, f"error: {e}") from None
    except (OSError, RuntimeError, ValueError, MemoryError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise fail(1, f"error: the import failed, nothing was written ({type(e).__name__}: {first})") from None
    plugins = info["release"]["plugins"]
    summary = ", ".join(f"{t} rank {p['hlora_r']} ({p['hlora_nums']} experts)" for t, p in plugins.items())
    console.print(f"[green]imported[/] {summary}; dtype {info['dtype']}; {out}/import.json records the sources")
    for task, exact in info["exact"].items():
        if not exact:
            diff = info["vocabulary_max_abs_difference"][task]
            console.print(
                f"note: the {task} plugin's forward differs from the release's {task} model: one shared vocabulary "
                f"(rows from {', '.join(info['vocabulary']['shared_from'])}; largest row difference {diff:.3g})"
                + ("" if info["lossless"] else f"; --dtype {info['dtype']} rounds some source tensors"),
                markup=False,
            )
    console.print(f"train it: medtune run -c configs/healthgpt-m3.yaml model.path={out}", markup=False)
