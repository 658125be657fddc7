"""The torch-free commands that run bundles: `run` here, `serve` (Ray Serve) and `generate-batch`
(Ray Data) at scale. Nothing here imports torch; a test runs them with torch unimportable."""

from __future__ import annotations

from collections import Counter

import click

from ..errors import FastervarError
from .app import main
from .options import parse_classes

PROVIDER = click.option("--provider", type=click.Choice(["cpu", "cuda", "tensorrt"]), default="cpu",
                        show_default=True)
THREADS = click.option("--threads", type=click.IntRange(min=0), default=0,
                       help="CPU threads per session (0: onnxruntime's default).")


@main.command()
@click.argument("bundle", type=click.Path())
@click.option("--class", "class_ids", type=int, multiple=True, metavar="N", help="Class index; repeat for more images.")
@click.option("--classes", "classes_file", type=click.Path(dir_okay=False), help="File of class indices.")
@click.option("--text-embeddings", type=click.Path(dir_okay=False), metavar="FILE.npz",
              help="Text bundles: prompts encoded elsewhere, 'embeddings' (N, T, C) float32 zero-padded and "
                   "'lengths' (N,); one image per row.")
@click.option("--prompt", "prompts", multiple=True, metavar="TEXT",
              help="Text bundles exported with --text-encoder: a prompt; repeat for more images.")
@click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False), help="Like --prompt, one per line of a file.")
@click.option("--aspect", help="Text bundles: the aspect to draw, one the bundle holds [default: its first].")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Directory for 0000.png, ...")
@PROVIDER
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Chunk size [default: the bundle's max batch].")
@THREADS
@click.option("--step-graphs", is_flag=True,
              help="Run one engine per step graph instead of the single whole-generation graph (TensorRT plans do).")
@click.option("--prepack", is_flag=True,
              help="With --step-graphs: let onnxruntime repack weights per graph (faster, one weight copy per graph).")
def run(bundle, class_ids, classes_file, text_embeddings, prompts, prompts_file, aspect, seed, out_dir, provider,
        batch_size, threads, step_graphs, prepack) -> None:
    """Generate with an exported bundle: torch-free, on onnxruntime or TensorRT. A class bundle
    takes --class/--classes; a text bundle --prompt/--prompts (when it holds a text encoder) or
    --text-embeddings, at one --aspect it holds."""
    from ..bundle_contract import read_manifest
    from ..runtime.pipeline import Pipeline
    from ..utils.images import image_folder, write_pngs
    from ..utils.noise import image_keys

    manifest = read_manifest(bundle, verify=False)          # the kind of bundle, before anything is read
    text_given = [f for f, v in (("--text-embeddings", text_embeddings), ("--prompt", prompts),
                                 ("--prompts", prompts_file), ("--aspect", aspect)) if v]
    class_given = [f for f, v in (("--class", class_ids), ("--classes", classes_file)) if v]
    if manifest.conditioning == "class":
        if text_given:
            raise FastervarError(f"{bundle} is a class-conditional bundle: {text_given[0]} is for text bundles; "
                                 f"give --class/--classes")
        conds = parse_classes(class_ids, classes_file)
    else:
        if class_given:
            raise FastervarError(f"{bundle} is a text-to-image bundle: {class_given[0]} is for class bundles; give "
                                 f"--text-embeddings FILE.npz")
        if (prompts or prompts_file) and manifest.text_encoder is None:
            raise FastervarError(f"{bundle} has no text encoder, so it cannot encode --prompt/--prompts: give "
                                 f"--text-embeddings FILE.npz, or export with --text-encoder DIR")
        if (prompts or prompts_file) and text_embeddings:
            raise FastervarError("--text-embeddings already holds the prompts: give it without --prompt/--prompts")
        if aspect is not None and aspect not in manifest.aspects:
            raise FastervarError(f"aspect {aspect!r} is not in {bundle}; it holds {', '.join(manifest.aspects)}")
        if text_embeddings:
            from ..utils.embeddings import read_embeddings
            emb, lengths = read_embeddings(text_embeddings)
            conds = [row[:n] for row, n in zip(emb, lengths)]
        else:
            from ..utils.tokens import read_prompts
            conds = read_prompts(prompts, prompts_file)
            if not conds:
                raise FastervarError("a text bundle needs --prompt TEXT, --prompts FILE or --text-embeddings FILE.npz"
                                     if manifest.text_encoder else
                                     "a text bundle needs --text-embeddings FILE.npz (one image per row)")
    with image_folder(out_dir) as stage:
        pipe = Pipeline.from_bundle(bundle, provider=provider, threads=threads, prepack=prepack,
                                    chain=False if step_graphs else None)
        keys = image_keys(seed, range(len(conds)))
        result = pipe.generate_items([(c, s, i) for c, (s, i) in zip(conds, keys)], batch_size, aspect)
        paths = write_pngs(result.images, stage)
    click.echo(f"wrote {len(paths)} images to {out_dir} ({result.seconds_total:.2f} s on {provider})")
    if result.moves is not None:           # a per-image decision: say what it picked
        counts = Counter(result.moves)
        click.echo("per-image decision: " + ", ".join(f"{n} {move}" for move, n in sorted(counts.items())))


def _replicas(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise FastervarError(f"--replicas must be a positive integer or auto, got {value!r}")
    return n


@main.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the HTTP proxy binds.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@PROVIDER
@click.option("--replicas", default="1", show_default=True, help="Replicas (one Pipeline each), or 'auto' to autoscale.")
@click.option("--batch-wait-ms", type=click.FloatRange(min=0), default=20.0, show_default=True,
              help="How long a replica waits to fill a batch (up to the bundle's max batch).")
@click.option("--max-body-bytes", type=click.IntRange(min=64), default=65536, show_default=True,
              help="Largest request body accepted; a larger one is answered 413.")
@THREADS
def serve(bundle, host, port, provider, replicas, batch_wait_ms, max_body_bytes, threads) -> None:
    """Serve a bundle over HTTP on Ray Serve: POST /generate, GET /healthz, GET /info."""
    from ..serve import ServeOptions, serve_bundle

    options = ServeOptions(bundle=bundle, provider=provider, threads=threads, batch_wait_ms=batch_wait_ms,
                           max_body_bytes=max_body_bytes)
    replica_count = _replicas(replicas)
    click.echo(f"serving {bundle} on http://{host}:{port}/generate (Ctrl-C stops)")
    serve_bundle(options, host, port, replica_count)


@main.command("generate-batch")
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False), required=True,
              help="File of class indices (a text bundle: of prompts, one per line); image i is the i-th.")
@click.option("--aspect", help="Text bundles: the aspect to draw, one the bundle holds [default: its first].")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Directory for 000000.png, ...")
@click.option("--concurrency", type=click.IntRange(min=1), default=1, show_default=True, help="Ray Data workers, one Pipeline each.")
@PROVIDER
@THREADS
def generate_batch(bundle, prompts_file, aspect, seed, out_dir, concurrency, provider, threads) -> None:
    """Generate many images on Ray Data; rerun the same command to resume (existing images are kept).
    With --provider cuda or tensorrt each worker is given a GPU."""
    from ..bundle_contract import read_manifest
    from ..serve import generate_batch as run_batch
    from ..utils.tokens import read_prompts

    text = read_manifest(bundle, verify=False).conditioning == "text"
    conds = read_prompts((), prompts_file) if text else parse_classes((), prompts_file)
    if not conds:
        raise FastervarError(f"--prompts {prompts_file} holds no prompts")
    written, skipped = run_batch(bundle, conds, seed, out_dir, concurrency, provider, threads, aspect=aspect)
    click.echo(f"wrote {written} images to {out_dir}" + (f" ({skipped} already there)" if skipped else ""))
