"""Serving at scale on Ray: an HTTP deployment (Ray Serve) and offline batch generation (Ray Data)
over the torch-free runtime.

We build no cluster layer of our own: Ray schedules replicas and workers, and KubeRay runs it on
many GPU nodes (deploy/). Each replica or worker holds one `Pipeline`. Concurrent requests are
batched by `@serve.batch` into one `Pipeline.generate_items` call; an image depends only on its
own (class, seed, index), so batching never changes what a request gets back. Ray is imported
lazily: the runtime and the rest of the package work without it.
"""

from __future__ import annotations

import base64
import importlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import FastervarError
from .utils.images import png_bytes

Item = tuple[int, int, int]            # (class, seed, index)


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


def parse_request(body: bytes, num_classes: int, max_items: int) -> tuple[list[Item], bool]:
    """`{"class": 3, "seed": 0, "index": 5}` or a list of them, and whether JSON was asked for
    (`"format": "json"`, or any list): (items, as_json). Every problem is a RequestError."""
    try:
        payload = json.loads(body or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(f"the body is not JSON: {exc}") from None
    entries = payload if isinstance(payload, list) else [payload]
    if not entries or not all(isinstance(e, dict) for e in entries):
        raise RequestError('send {"class": C, "seed": S, "index": I} or a non-empty list of them')
    if len(entries) > max_items:
        raise RequestError(f"{len(entries)} items in one request; at most {max_items}")
    items = []
    for e in entries:
        unknown = set(e) - {"class", "seed", "index", "format"}
        if unknown:
            raise RequestError(f"unknown field {min(unknown)!r}")
        c = _integer(e, "class", None)
        if c >= num_classes:
            raise RequestError(f"class index {c} is out of range: this bundle has classes 0..{num_classes - 1}")
        if e.get("format", "png") not in ("png", "json"):
            raise RequestError(f"field 'format' must be png or json, got {e['format']!r}")
        items.append((c, _integer(e, "seed", 0), _integer(e, "index", 0)))
    as_json = isinstance(payload, list) or any(e.get("format") == "json" for e in entries)
    return items, as_json


def item_json(item: Item, image: np.ndarray, tokens: Sequence[np.ndarray]) -> dict[str, Any]:
    c, s, i = item
    return {"class": c, "seed": s, "index": i, "png_base64": base64.b64encode(png_bytes(image)).decode(),
            "tokens": [t.tolist() for t in tokens]}


def info(manifest) -> dict[str, Any]:
    """What GET /info says about the loaded bundle; `accepts` is what a POST /generate item may
    carry (the served page builds its form from it)."""
    d = manifest.data
    return {"model": d["model"]["config"], "profile": d["profile"]["name"], "precision": d["precision"],
            "num_classes": manifest.num_classes, "steps": manifest.num_steps, "max_batch": manifest.max_batch,
            "sampler": d["sampler"], "accepts": {"classes": manifest.num_classes, "seed": True, "index": True}}


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
            self.opts = opts
            self.batches: deque[int] = deque(maxlen=1000)       # recent batch sizes, for GET /stats
            self.page = page()
            self._batched.set_max_batch_size(self.pipe.manifest.max_batch)
            self._batched.set_batch_wait_timeout_s(opts.batch_wait_ms / 1000)

        @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.02)
        async def _batched(self, items: list[Item]) -> list[tuple[np.ndarray, list[np.ndarray]]]:
            self.batches.append(len(items))
            result = self.pipe.generate_items(items)
            return [(result.images[j], [t[j] for t in result.tokens]) for j in range(len(items))]

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
                items, as_json = parse_request(body, self.pipe.num_classes, self.opts.max_items)
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


def _class_bundle(manifest, bundle: str) -> None:
    """Serving and batch generation take class indices; a text bundle would need prompts encoded
    inside it, which export does not build yet."""
    if manifest.conditioning != "class":
        raise FastervarError(f"{bundle} is a text bundle; serving and generate-batch take class indices (prompts "
                             f"need the text encoder inside the bundle, not built yet): run it with "
                             f"`fastervar run --text-embeddings`")


def serve_bundle(options: ServeOptions, host: str, port: int, replicas: int | str, blocking: bool = True):
    """Start Ray (locally unless RAY_ADDRESS names a cluster) and Serve, and deploy the bundle;
    returns the handle. With `blocking`, serve until interrupted, then shut everything down."""
    from .bundle_contract import read_manifest
    require("serve")
    _class_bundle(read_manifest(options.bundle), options.bundle)   # a bad bundle is one line here, not a dead replica
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

    def __init__(self, bundle: str, out: str, provider: str, threads: int):
        from .runtime.pipeline import Pipeline
        self.pipe = Pipeline.from_bundle(bundle, provider=provider, threads=threads)
        self.out = Path(out)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from .utils.atomic import atomic_path
        items = list(zip(batch["class"].tolist(), batch["seed"].tolist(), batch["index"].tolist()))
        images = self.pipe.generate_items(items).images
        for (_, _, index), image in zip(items, images):
            with atomic_path(self.out / image_name(index)) as tmp:
                tmp.write_bytes(png_bytes(image))
        return {"index": batch["index"]}


def image_name(index: int) -> str:
    return f"{index:06d}.png"


def generate_batch(bundle: str, classes: Sequence[int], seed: int, out: str | Path, concurrency: int = 1,
                   provider: str = "cpu", threads: int = 0, progress: bool = True) -> tuple[int, int]:
    """Image i of `classes` (noise key (seed, i)) to OUT/{i:06d}.png on Ray Data; images already
    there are skipped, so a rerun resumes. Returns (written, skipped)."""
    from tqdm.auto import tqdm

    from .bundle_contract import read_manifest
    ray = require("batch")
    manifest = read_manifest(bundle)
    _class_bundle(manifest, bundle)
    bad = [c for c in classes if not 0 <= c < manifest.num_classes]
    if bad:
        raise FastervarError(f"class index {bad[0]} is out of range: this bundle has classes 0..{manifest.num_classes - 1}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    todo = [{"class": int(c), "seed": int(seed), "index": i} for i, c in enumerate(classes)
            if not (out / image_name(i)).exists()]
    skipped = len(classes) - len(todo)
    if not todo:
        return 0, skipped
    started = start_ray()
    ds = ray.data.from_items(todo).map_batches(
        _BatchWriter, fn_constructor_args=(str(bundle), str(out), provider, threads),
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
