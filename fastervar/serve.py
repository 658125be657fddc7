"""Serving at scale on Ray: an HTTP deployment (Ray Serve) and offline batch generation (Ray Data)
over the torch-free runtime.

We build no cluster layer of our own: Ray schedules replicas and workers, and KubeRay runs it on
many GPU nodes (deploy/). Each replica or worker holds one `Pipeline`. Concurrent requests are
batched by `@serve.batch` into one `Pipeline.generate_items` call per aspect; an image depends only
on its own (class or prompt, seed, index, aspect), so batching never changes what a request gets
back. Ray is imported
lazily: the runtime and the rest of the package work without it.
"""

from __future__ import annotations

import base64
import importlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import FastervarError
from .utils.images import png_bytes

Item = tuple[int | str, int, int, str | None]     # (class or prompt, seed, index, aspect of a text bundle)
MAX_PROMPT_CHARS = 2000                 # the page's prompt box holds as much; tokens are checked too


class RequestError(FastervarError):
    """A request the server answers with HTTP 400 and this one-line message."""


# What each extra's code imports, checked by importing it: `ray.data` needs pandas and pyarrow,
# which `ray[serve]` alone does not bring.
NEEDS = {"serve": ("ray", "ray.serve", "starlette"), "batch": ("ray", "ray.data")}
WHAT = {"serve": "Ray Serve", "batch": "Ray Data"}


def require(extra: str):
    """The `ray` module, once everything `extra`'s code imports is importable; else one line that
    names the extra to install and the module that is missing."""
    for module in NEEDS[extra]:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            missing = getattr(exc, "name", None) or module
            raise FastervarError(f"this needs {WHAT[extra]}: pip install 'fastervar[{extra}]' "
                                 f"(cannot import {missing})") from None
    import ray
    return ray


def _integer(entry: dict, key: str, default: int | None, low: int = 0) -> int:
    value = entry.get(key, default)
    if value is None:
        raise RequestError(f"field {key!r} is missing")
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise RequestError(f"field {key!r} must be an integer >= {low}, got {value!r}")
    return value


@dataclass(frozen=True)
class RequestSchema:
    """What a POST /generate item may carry for the loaded bundle: a class index below
    `num_classes`, or (a text bundle) a prompt of at most `max_tokens` tokens, as `count_tokens`
    counts them, drawn at one of `aspects` (the first by default)."""

    num_classes: int | None = None
    aspects: tuple[str, ...] = ()
    max_tokens: int = 0
    count_tokens: Callable[[str], int] | None = None

    @classmethod
    def of(cls, pipe) -> RequestSchema:
        m = pipe.manifest
        if m.conditioning == "class":
            return cls(num_classes=m.num_classes)
        return cls(aspects=tuple(m.aspects), max_tokens=m.tokenizer[1], count_tokens=pipe.count_tokens)

    @property
    def fields(self) -> set[str]:
        return {"seed", "index", "format"} | ({"class"} if self.num_classes else {"prompt", "aspect"})

    def example(self) -> str:
        return '{"class": C, "seed": S, "index": I}' if self.num_classes else '{"prompt": "...", "seed": S, "aspect": A}'

    def condition(self, entry: dict) -> tuple[int | str, str | None]:
        if self.num_classes:
            c = _integer(entry, "class", None)
            if c >= self.num_classes:
                raise RequestError(f"class index {c} is out of range: this bundle has classes 0..{self.num_classes - 1}")
            return c, None
        prompt = entry.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise RequestError("field 'prompt' must be non-empty text")
        n = len(prompt) if len(prompt) > MAX_PROMPT_CHARS else self.count_tokens(prompt)
        if len(prompt) > MAX_PROMPT_CHARS or n > self.max_tokens:
            raise RequestError(f"the prompt is too long ({len(prompt)} characters, {n} tokens); at most "
                               f"{MAX_PROMPT_CHARS} characters and {self.max_tokens} tokens")
        aspect = entry.get("aspect", self.aspects[0])
        if aspect not in self.aspects:
            raise RequestError(f"aspect {aspect!r} is not in this bundle; it holds {', '.join(self.aspects)}")
        return prompt, aspect


def parse_request(body: bytes, schema: RequestSchema, max_items: int) -> tuple[list[Item], bool]:
    """`{"class": 3, "seed": 0, "index": 5}` (a text bundle: `{"prompt": "...", "seed": 0, "aspect":
    "1:1"}`) or a list of them, and whether JSON was asked for (`"format": "json"`, or any list):
    (items, as_json). Every problem is a RequestError."""
    try:
        payload = json.loads(body or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(f"the body is not JSON: {exc}") from None
    entries = payload if isinstance(payload, list) else [payload]
    if not entries or not all(isinstance(e, dict) for e in entries):
        raise RequestError(f"send {schema.example()} or a non-empty list of them")
    if len(entries) > max_items:
        raise RequestError(f"{len(entries)} items in one request; at most {max_items}")
    items = []
    for e in entries:
        unknown = set(e) - schema.fields
        if unknown:
            raise RequestError(f"unknown field {min(unknown)!r}")
        cond, aspect = schema.condition(e)
        if e.get("format", "png") not in ("png", "json"):
            raise RequestError(f"field 'format' must be png or json, got {e['format']!r}")
        items.append((cond, _integer(e, "seed", 0), _integer(e, "index", 0), aspect))
    as_json = isinstance(payload, list) or any(e.get("format") == "json" for e in entries)
    return items, as_json


def item_json(item: Item, image: np.ndarray, tokens: Sequence[np.ndarray]) -> dict[str, Any]:
    c, s, i, aspect = item
    what = {"prompt": c, "aspect": aspect} if isinstance(c, str) else {"class": c}
    return {**what, "seed": s, "index": i, "png_base64": base64.b64encode(png_bytes(image)).decode(),
            "tokens": [t.tolist() for t in tokens]}


def generate_grouped(pipe, items: Sequence[Item]) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """Each item's image and tokens, one `generate_items` call per aspect among them."""
    out: list = [None] * len(items)
    for aspect in dict.fromkeys(it[3] for it in items):
        rows = [j for j, it in enumerate(items) if it[3] == aspect]
        result = pipe.generate_items([items[j][:3] for j in rows], aspect=aspect)
        for n, j in enumerate(rows):
            out[j] = (result.images[n], [t[n] for t in result.tokens])
    return out


def info(manifest) -> dict[str, Any]:
    """What GET /info says about the loaded bundle; `accepts` is what a POST /generate item may
    carry (the served page builds its form from it)."""
    d = manifest.data
    accepts: dict[str, Any] = {"seed": True, "index": True}
    if manifest.conditioning == "class":
        accepts["classes"] = manifest.num_classes
    else:
        accepts.update(prompt={"max_tokens": manifest.tokenizer[1], "max_chars": MAX_PROMPT_CHARS},
                       aspects=manifest.aspects)
    return {"model": d["model"]["config"], "profile": d["profile"]["name"], "precision": d["precision"],
            "num_classes": manifest.num_classes, "steps": manifest.num_steps, "max_batch": manifest.max_batch,
            "sampler": d["sampler"], "accepts": accepts}


def page() -> bytes:
    """GET /: one self-contained HTML page (no framework, nothing fetched from elsewhere) to try
    the bundle from a browser."""
    from importlib.resources import files
    return (files(__package__) / "assets" / "serve" / "index.html").read_bytes()


@dataclass(frozen=True)
class ServeOptions:
    bundle: str
    provider: str = "cpu"
    threads: int = 0
    batch_wait_ms: float = 20.0
    max_items: int = 64
    max_body_bytes: int = 65536           # a request of 64 items is a few KB; a larger body is answered 413


class BodyTooLarge(RequestError):
    """A request body over `max_body_bytes`: HTTP 413, read no further."""


async def read_body(request, limit: int) -> bytes:
    """The request body, refused as soon as it passes `limit` bytes (by its Content-Length, or
    while it streams in), so a client cannot make a replica buffer an unbounded body."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"the body is {declared} bytes; at most {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(f"the body is over {limit} bytes")
    return bytes(body)


def worker_resources(provider: str) -> dict[str, float]:
    """What a Ray worker holding one Pipeline asks of the cluster: a GPU for a GPU provider."""
    return {"num_cpus": 1, "num_gpus": 1} if provider in ("cuda", "tensorrt") else {"num_cpus": 1}


def deployment(options: ServeOptions, replicas: int | str = 1):
    """The Ray Serve application for a bundle: `serve.run(deployment(...))`."""
    require("serve")
    import time
    from collections import deque

    from ray import serve
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response

    from .bundle_contract import read_manifest

    scaling: dict[str, Any] = ({"autoscaling_config": {"min_replicas": 1, "max_replicas": max(1, os.cpu_count() or 1)}}
                               if replicas == "auto" else {"num_replicas": int(replicas)})
    # a GPU provider gets a GPU per replica from Ray; a CPU replica shares the node's cores
    actor = {"num_cpus": 0, "num_gpus": 1} if options.provider in ("cuda", "tensorrt") else {"num_cpus": 0}
    # Serve lets a replica hold 5 requests by default, which would cap every batch at 5
    in_flight = 4 * read_manifest(options.bundle, verify=False).max_batch

    @serve.deployment(**scaling, ray_actor_options=actor, max_ongoing_requests=in_flight)
    class FastervarGenerator:
        def __init__(self, opts: ServeOptions):
            from .runtime.pipeline import Pipeline
            self.pipe = Pipeline.from_bundle(opts.bundle, provider=opts.provider, threads=opts.threads)
            self.schema = RequestSchema.of(self.pipe)
            self.opts = opts
            self.batches: deque[int] = deque(maxlen=1000)       # recent batch sizes, for GET /stats
            self.page = page()
            self._batched.set_max_batch_size(self.pipe.manifest.max_batch)
            self._batched.set_batch_wait_timeout_s(opts.batch_wait_ms / 1000)

        @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.02)
        async def _batched(self, items: list[Item]) -> list[tuple[np.ndarray, list[np.ndarray]]]:
            self.batches.append(len(items))
            return generate_grouped(self.pipe, items)

        async def generate(self, items: list[Item]) -> list[tuple[np.ndarray, list[np.ndarray]]]:
            """Through the batch queue, one entry per item, so items join other requests' batches."""
            import asyncio
            return list(await asyncio.gather(*(self._batched(item) for item in items)))

        def stats(self) -> dict[str, Any]:
            return {"batches": list(self.batches)}

        async def __call__(self, request: Request) -> Response:
            path, method = request.url.path.rstrip("/") or "/", request.method
            if path == "/" and method == "GET":
                return HTMLResponse(self.page)
            if path == "/healthz" and method == "GET":
                return JSONResponse({"status": "ok"})
            if path == "/info" and method == "GET":
                return JSONResponse(info(self.pipe.manifest))
            if path == "/stats" and method == "GET":
                return JSONResponse(self.stats())
            if path != "/generate":
                return JSONResponse({"error": f"no route {method} {path}; use POST /generate, GET /, /healthz or /info"},
                                    status_code=404)
            if method != "POST":
                return JSONResponse({"error": "POST a JSON body to /generate"}, status_code=405)
            try:
                body = await read_body(request, self.opts.max_body_bytes)
                items, as_json = parse_request(body, self.schema, self.opts.max_items)
            except BodyTooLarge as exc:
                return JSONResponse({"error": str(exc)}, status_code=413)
            except RequestError as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
            started = time.perf_counter()
            try:
                outs = await self.generate(items)
            except Exception as exc:  # noqa: BLE001 -- an engine failure answers 500; the replica keeps serving
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                return JSONResponse({"error": f"generation failed: {first}"}, status_code=500)
            # the time this request waited for its batch and generated, as the page shows it
            took = {"X-Generation-Seconds": f"{time.perf_counter() - started:.4f}"}
            if as_json:
                return JSONResponse({"images": [item_json(it, img, toks) for it, (img, toks) in zip(items, outs)]},
                                    headers=took)
            return Response(png_bytes(outs[0][0]), media_type="image/png", headers=took)

    return FastervarGenerator.bind(options)


def app(args: dict[str, Any]):
    """Application builder for a Serve config file (`import_path: fastervar.serve:app`, with
    `args: {bundle: ..., provider: ..., replicas: ...}`)."""
    args = dict(args)
    replicas = args.pop("replicas", 1)
    try:
        options = ServeOptions(**args)
    except TypeError as exc:
        raise FastervarError(f"bad Serve application arguments: {exc}") from None
    return deployment(options, replicas)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now, for a Serve proxy started right after (tests, benchmarks)."""
    import socket
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start_ray(temp_dir: str | None = None) -> bool:
    """Connect to the cluster RAY_ADDRESS names, or start a local Ray without the dashboard or
    usage reporting; returns whether this call started it (False if Ray was already up). Callers
    `require` their extra first."""
    import ray
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if temp_dir:
        kwargs["_temp_dir"] = temp_dir
    ray.init(**kwargs)
    return True


def _servable(manifest, bundle: str) -> None:
    """A text bundle is served (and batch-generated) from prompts, so it must hold its text encoder."""
    if manifest.conditioning == "text" and manifest.text_encoder is None:
        raise FastervarError(f"{bundle} is a text bundle without a text encoder, so it cannot take prompts: "
                             f"export it with --text-encoder DIR (or run it with `fastervar run --text-embeddings`)")


def serve_bundle(options: ServeOptions, host: str, port: int, replicas: int | str, blocking: bool = True):
    """Start Ray (locally unless RAY_ADDRESS names a cluster) and Serve, and deploy the bundle;
    returns the handle. With `blocking`, serve until interrupted, then shut everything down."""
    from .bundle_contract import read_manifest
    require("serve")
    _servable(read_manifest(options.bundle), options.bundle)   # a bad bundle is one line here, not a dead replica
    start_ray()
    from ray import serve
    serve.start(http_options={"host": host, "port": port})
    handle = serve.run(deployment(options, replicas), name="fastervar", route_prefix="/")
    if not blocking:
        return handle
    import signal
    import sys
    import time
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))      # `kill`, `docker stop`: shut down cleanly too
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        shutdown()
    return handle


def shutdown() -> None:
    ray = require("serve")
    from ray import serve
    if ray.is_initialized():
        serve.shutdown()
        ray.shutdown()


# -- Ray Data ----------------------------------------------------------------------------------

class _BatchWriter:
    """A Ray Data worker: one Pipeline, each batch generated in one call and written atomically."""

    def __init__(self, bundle: str, out: str, provider: str, threads: int, aspect: str | None):
        from .runtime.pipeline import Pipeline
        self.pipe = Pipeline.from_bundle(bundle, provider=provider, threads=threads)
        self.out, self.aspect = Path(out), aspect

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from .utils.atomic import atomic_path
        conds = batch["class"].tolist() if "class" in batch else [str(p) for p in batch["prompt"]]
        items = list(zip(conds, batch["seed"].tolist(), batch["index"].tolist()))
        images = self.pipe.generate_items(items, aspect=self.aspect).images
        for (_, _, index), image in zip(items, images):
            with atomic_path(self.out / image_name(index)) as tmp:
                tmp.write_bytes(png_bytes(image))
        return {"index": batch["index"]}


def image_name(index: int) -> str:
    return f"{index:06d}.png"


def generate_batch(bundle: str, conditions: Sequence[int | str], seed: int, out: str | Path, concurrency: int = 1,
                   provider: str = "cpu", threads: int = 0, progress: bool = True,
                   aspect: str | None = None) -> tuple[int, int]:
    """Image i of `conditions` (class indices, or a text bundle's prompts; noise key (seed, i)) to
    OUT/{i:06d}.png on Ray Data, at `aspect` for a text bundle; images already there are skipped,
    so a rerun resumes. Returns (written, skipped)."""
    from tqdm.auto import tqdm

    from .bundle_contract import read_manifest
    ray = require("batch")
    manifest = read_manifest(bundle)
    _servable(manifest, bundle)
    if manifest.conditioning == "class":
        bad = [c for c in conditions if not 0 <= c < manifest.num_classes]
        if bad:
            raise FastervarError(f"class index {bad[0]} is out of range: this bundle has classes "
                                 f"0..{manifest.num_classes - 1}")
        key = "class"
    else:
        if aspect is not None and aspect not in manifest.aspects:
            raise FastervarError(f"aspect {aspect!r} is not in {bundle}; it holds {', '.join(manifest.aspects)}")
        key = "prompt"
    if aspect is not None and manifest.conditioning == "class":
        raise FastervarError(f"{bundle} is a class-conditional bundle: --aspect is for text bundles")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    todo = [{key: c, "seed": int(seed), "index": i} for i, c in enumerate(conditions)
            if not (out / image_name(i)).exists()]
    skipped = len(conditions) - len(todo)
    if not todo:
        return 0, skipped
    started = start_ray()
    ds = ray.data.from_items(todo).map_batches(
        _BatchWriter, fn_constructor_args=(str(bundle), str(out), provider, threads, aspect),
        batch_size=manifest.max_batch, concurrency=concurrency, **worker_resources(provider))
    written = 0
    try:
        with tqdm(total=len(todo), desc="generate-batch", unit="img", disable=not progress) as bar:
            for batch in ds.iter_batches(batch_size=None):
                n = len(batch["index"])
                written += n
                bar.update(n)
    finally:
        if started:
            ray.shutdown()
    return written, skipped
