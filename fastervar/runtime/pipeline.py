"""Chain a bundle's step engines and decoder into images, with the portable sampler's noise.

Torch-free: numpy in, numpy out. State flows between engines by name (an engine output `out.X` is
the input `X` of later engines), labels and noise come from the request, and requests larger than
the bundle's maximum batch run in chunks, each image still drawing noise from (seed, its index).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bundle_contract import (
    F_HAT,
    IMAGES,
    LABELS,
    NOISE,
    TOKENS,
    Manifest,
    read_manifest,
    state_name,
    step_noise,
    step_tokens,
)
from ..errors import FastervarError
from ..utils.noise import NoiseKey, batch_uniform, image_keys
from .sessions import Engine, create_chain_engine, create_engines


@dataclass
class RuntimeResult:
    images: np.ndarray                  # (N, H, W, 3) uint8
    tokens: list[np.ndarray]            # per scale step, (N, p*p) int64; (N, 0) for a skipped step
    step_seconds: list[float]           # per scale step (noise draw included), summed over chunks
    decode_seconds: float
    graph_seconds: float = 0.0          # the single-graph engine: steps and decoder in one call

    @property
    def seconds_total(self) -> float:
        return sum(self.step_seconds) + self.decode_seconds + self.graph_seconds


class Pipeline:
    """A loaded bundle, ready to generate: `Pipeline.from_bundle(path).generate([3, 7], seed=0)`."""

    def __init__(self, manifest: Manifest, engines: list[Engine], provider: str, chain: Engine | None = None):
        self.manifest, self.provider, self._chain = manifest, provider, chain
        self._steps = dict(zip([e.step for e in manifest.steps], engines[:-1]))
        self._decoder = engines[-1] if engines else None

    @classmethod
    def from_bundle(cls, path: str | Path, provider: str = "cpu", verify: bool = True,
                    threads: int = 0, prepack: bool = False, chain: bool | None = None) -> Pipeline:
        """Check the bundle (manifest, versions, hashes) and open its engines.

        `chain` runs the whole generation as one graph in one session (the default on onnxruntime
        when the bundle has it): fastest, one weight copy, but no per-step timings. Otherwise an
        engine per step graph sharing one memory-mapped weights file; `prepack` then lets
        onnxruntime repack matmul weights per session: faster, but one weight copy per step graph.
        """
        manifest = read_manifest(path, verify=verify)
        if chain is None:
            chain = manifest.chain is not None and provider in ("cpu", "cuda")
        if chain:
            if manifest.chain is None:
                raise FastervarError(f"bundle {path} has no single-graph engine; re-export it or run its step graphs")
            return cls(manifest, [], provider, create_chain_engine(manifest, provider, threads))
        return cls(manifest, create_engines(manifest, provider, threads, prepack), provider)

    @property
    def single_graph(self) -> bool:
        """Whether this pipeline runs the whole generation as one graph (no per-step times)."""
        return self._chain is not None

    @property
    def num_classes(self) -> int:
        return self.manifest.num_classes

    def generate(self, classes: Sequence[int], seed: int = 0, batch_size: int | None = None,
                 first_index: int = 0) -> RuntimeResult:
        """One image per class index, in order; batches above the exported maximum are chunked.

        Image i of the request draws its noise as image `first_index + i`, so a request split by
        the caller gives the same images as one request.
        """
        keys = image_keys(seed, range(first_index, first_index + len(classes)))
        return self.generate_items([(c, s, i) for c, (s, i) in zip(classes, keys)], batch_size)

    def generate_items(self, items: Sequence[tuple[int, int, int]], batch_size: int | None = None) -> RuntimeResult:
        """One image per (class, seed, index) item, in order. Each image depends only on its own
        item, so items of different requests can share a batch (a server batching requests)."""
        classes = [int(c) for c, _, _ in items]
        keys: list[NoiseKey] = [(int(s), int(i)) for _, s, i in items]
        bad = [c for c in classes if not 0 <= c < self.num_classes]
        if bad:
            raise FastervarError(f"class index {bad[0]} is out of range: this bundle has classes "
                                 f"0..{self.num_classes - 1}")
        if not classes:
            raise FastervarError("no classes given")
        chunk = min(batch_size or self.manifest.max_batch, self.manifest.max_batch)
        parts = [self._chunk(classes[lo:lo + chunk], keys[lo:lo + chunk]) for lo in range(0, len(classes), chunk)]
        return RuntimeResult(
            images=np.concatenate([p.images for p in parts]),
            tokens=[np.concatenate([p.tokens[k] for p in parts]) for k in range(len(parts[0].tokens))],
            step_seconds=[sum(p.step_seconds[k] for p in parts) for k in range(len(parts[0].step_seconds))],
            decode_seconds=sum(p.decode_seconds for p in parts),
            graph_seconds=sum(p.graph_seconds for p in parts),
        )

    def _chunk(self, classes: list[int], keys: Sequence[NoiseKey]) -> RuntimeResult:
        if self._chain is not None:
            return self._chain_chunk(classes, keys)
        m = self.manifest
        b = len(classes)
        shape, dtype = m.latent
        state: dict[str, np.ndarray] = {LABELS: np.asarray(classes, dtype=np.int64),
                                        F_HAT: np.zeros((b, *shape), dtype=dtype)}
        specs = {e.step: e for e in m.steps}
        tokens, seconds = [], []
        for k in range(len(m.patch_nums)):
            t0 = time.perf_counter()
            engine = self._steps.get(k)
            if engine is None:
                tokens.append(np.zeros((b, 0), dtype=np.int64))
            else:
                state[NOISE] = batch_uniform(keys, k, m.noise_width(k))
                out = engine.run({i["name"]: state[i["name"]] for i in specs[k].inputs})
                tokens.append(out.pop(TOKENS))
                state.update({state_name(name): v for name, v in out.items() if state_name(name)})
            seconds.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        images = self._decoder.run({F_HAT: state[F_HAT]})[IMAGES]
        return RuntimeResult(images, tokens, seconds, time.perf_counter() - t0)

    def _chain_chunk(self, classes: list[int], keys: Sequence[NoiseKey]) -> RuntimeResult:
        """One call for the whole batch (noise draw included); per-step times stay zero, as one
        graph cannot split them."""
        m = self.manifest
        t0 = time.perf_counter()
        feeds = {LABELS: np.asarray(classes, dtype=np.int64)}
        for e in m.steps:
            feeds[step_noise(e.step)] = batch_uniform(keys, e.step, m.noise_width(e.step))
        out = self._chain.run(feeds)
        tokens = [out.get(step_tokens(k), np.zeros((len(classes), 0), dtype=np.int64)) for k in range(len(m.patch_nums))]
        return RuntimeResult(out[IMAGES], tokens, [0.0] * len(m.patch_nums), 0.0, time.perf_counter() - t0)
