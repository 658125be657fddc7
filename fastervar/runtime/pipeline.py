"""Chain a bundle's step engines and decoder into images, with the portable sampler's noise.

Torch-free: numpy in, numpy out. State flows between engines by name (an engine output `out.X` is
the input `X` of later engines), the condition (labels, or prompt embeddings padded to the batch's
longest prompt) and noise come from the request, and requests larger than
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
    TEXT,
    TEXT_LENGTHS,
    TOKEN_IDS,
    TOKENS,
    Manifest,
    read_manifest,
    state_name,
    step_noise,
    step_tokens,
)
from ..errors import FastervarError
from ..utils.noise import NoiseKey, batch_uniform, image_keys
from ..utils.tokens import PromptTokenizer
from .sessions import (
    Engine,
    OrtEngine,
    SharedWeights,
    check_provider,
    create_chain_engine,
    create_engines,
)


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


Condition = int | str | np.ndarray   # a class index, a prompt, or one prompt's (T, C) float32 embeddings


class Pipeline:
    """A loaded bundle, ready to generate: `Pipeline.from_bundle(path).generate([3, 7], seed=0)`,
    or for a text bundle `generate_items([(embeddings, seed, index), ...], aspect="1:1")`."""

    def __init__(self, manifest: Manifest, provider: str, threads: int = 0, prepack: bool = False,
                 chain: bool = False):
        self.manifest, self.provider = manifest, provider
        self._threads, self._prepack, self._single = threads, prepack, chain
        self._weights: SharedWeights | None = None
        self._sets: dict[str | None, tuple[Manifest, dict[int, Engine], Engine | None, Engine | None]] = {}
        self._open(manifest.aspect)
        self._encoder: tuple[PromptTokenizer, Engine] | None = None

    @classmethod
    def from_bundle(cls, path: str | Path, provider: str = "cpu", verify: bool = True,
                    threads: int = 0, prepack: bool = False, chain: bool | None = None) -> Pipeline:
        """Check the bundle (manifest, versions, hashes) and open its engines (a text bundle's
        other aspects open when first asked for).

        `chain` runs the whole generation as one graph in one session (the default on onnxruntime
        when the bundle has it): fastest, one weight copy, but no per-step timings. Otherwise an
        engine per step graph sharing one memory-mapped weights file; `prepack` then lets
        onnxruntime repack matmul weights per session: faster, but one weight copy per step graph.
        """
        manifest = read_manifest(path, verify=verify)
        if chain is None:
            chain = manifest.chain is not None and provider in ("cpu", "cuda")
        if chain and manifest.chain is None:
            raise FastervarError(f"bundle {path} has no single-graph engine; re-export it or run its step graphs")
        check_provider(provider)
        return cls(manifest, provider, threads, prepack, chain)

    def _open(self, aspect: str | None) -> tuple[Manifest, dict[int, Engine], Engine | None, Engine | None]:
        if aspect not in self._sets:
            m = self.manifest if aspect == self.manifest.aspect else self.manifest.at_aspect(aspect)
            if self._single:
                self._sets[aspect] = (m, {}, None, create_chain_engine(m, self.provider, self._threads))
            else:
                if self._weights is None and self.provider != "tensorrt":     # plans hold their own weights
                    self._weights = SharedWeights(m)
                engines = create_engines(m, self.provider, self._threads, self._prepack, self._weights)
                self._sets[aspect] = (m, dict(zip([e.step for e in m.steps], engines[:-1])), engines[-1], None)
        return self._sets[aspect]

    @property
    def single_graph(self) -> bool:
        """Whether this pipeline runs the whole generation as one graph (no per-step times)."""
        return self._single

    @property
    def num_classes(self) -> int | None:
        return self.manifest.num_classes

    @property
    def aspects(self) -> list[str]:
        """The aspects a text bundle draws, default first ([] for a class-conditional bundle)."""
        return self.manifest.aspects

    @property
    def takes_prompts(self) -> bool:
        """Whether the bundle holds a text encoder, so prompts may be given as text."""
        return self.manifest.text_encoder is not None

    def count_tokens(self, prompt: str) -> int:
        """How many tokens the bundle's tokenizer makes of `prompt`, before any cut."""
        return self._text_encoder()[0].count(prompt)

    def _text_encoder(self) -> tuple[PromptTokenizer, Engine]:
        m = self.manifest
        if m.text_encoder is None:
            raise FastervarError(f"bundle {m.root} has no text encoder (export it with --text-encoder DIR), so it "
                                 f"cannot encode prompts: give prompt embeddings")
        if self._encoder is None:
            path, max_length = m.tokenizer
            provider = self.provider if self.provider in ("cpu", "cuda") else "cpu"
            self._encoder = (PromptTokenizer.from_file(path, max_length),
                             OrtEngine(m, m.text_encoder, self._weights, provider, self._threads))
        return self._encoder

    def encode(self, prompts: Sequence[str]) -> list[np.ndarray]:
        """Each prompt's (tokens, C) embeddings from the bundle's text encoder, in batches of at
        most the bundle's maximum; a prompt's embeddings do not depend on its batch."""
        m = self.manifest
        tokenizer, engine = self._text_encoder()
        bad = next((p for p in prompts if not isinstance(p, str) or not p.strip()), None)
        if bad is not None:
            raise FastervarError(f"a prompt must be non-empty text, got {bad!r}")
        out = []
        for lo in range(0, len(prompts), m.max_batch):
            ids = tokenizer.ids(list(prompts[lo:lo + m.max_batch]))
            lengths = np.array([len(i) for i in ids], dtype=np.int64)
            batch = np.zeros((len(ids), int(lengths.max())), dtype=np.int64)
            for row, i in zip(batch, ids):
                row[:len(i)] = i
            text = engine.run({TOKEN_IDS: batch, TEXT_LENGTHS: lengths})[TEXT]
            out += [t[:n] for t, n in zip(text, lengths)]
        return out

    def generate(self, classes: Sequence[int], seed: int = 0, batch_size: int | None = None,
                 first_index: int = 0) -> RuntimeResult:
        """One image per class index, in order; batches above the exported maximum are chunked.

        Image i of the request draws its noise as image `first_index + i`, so a request split by
        the caller gives the same images as one request.
        """
        keys = image_keys(seed, range(first_index, first_index + len(classes)))
        return self.generate_items([(c, s, i) for c, (s, i) in zip(classes, keys)], batch_size)

    def generate_items(self, items: Sequence[tuple[Condition, int, int]], batch_size: int | None = None,
                       aspect: str | None = None) -> RuntimeResult:
        """One image per (condition, seed, index) item, in order, at `aspect` (a text bundle's;
        default its first). Each image depends only on its own item, so items of different
        requests, and prompts of different lengths, can share a batch (a server batching requests)."""
        if not items:
            raise FastervarError("no classes given" if self.manifest.conditioning == "class" else "no prompts given")
        m = self.manifest
        if aspect is not None and aspect not in self.aspects:
            raise FastervarError(f"aspect {aspect!r} is not in this bundle; it holds "
                                 f"{', '.join(self.aspects) or 'one shape only (a class-conditional bundle)'}")
        conds = [c for c, _, _ in items]
        texts = [i for i, c in enumerate(conds) if isinstance(c, str)]
        if texts and m.conditioning == "text":
            for i, e in zip(texts, self.encode([conds[i] for i in texts])):
                conds[i] = e
        conds = self._check_conditions(conds)
        keys: list[NoiseKey] = [(int(s), int(i)) for _, s, i in items]
        chunk = min(batch_size or m.max_batch, m.max_batch)
        view = self._open(aspect if aspect is not None else m.aspect)
        parts = [self._chunk(view, conds[lo:lo + chunk], keys[lo:lo + chunk]) for lo in range(0, len(conds), chunk)]
        return RuntimeResult(
            images=np.concatenate([p.images for p in parts]),
            tokens=[np.concatenate([p.tokens[k] for p in parts]) for k in range(len(parts[0].tokens))],
            step_seconds=[sum(p.step_seconds[k] for p in parts) for k in range(len(parts[0].step_seconds))],
            decode_seconds=sum(p.decode_seconds for p in parts),
            graph_seconds=sum(p.graph_seconds for p in parts),
        )

    def _check_conditions(self, conds: list[Condition]) -> list:
        """Class indices in range, or prompt embeddings of the bundle's width and a usable length."""
        m = self.manifest
        if m.conditioning == "class":
            if any(isinstance(c, np.ndarray | str) for c in conds):
                raise FastervarError("this bundle is class-conditional: give class indices, not prompts")
            classes = [int(c) for c in conds]
            bad = [c for c in classes if not 0 <= c < m.num_classes]
            if bad:
                raise FastervarError(f"class index {bad[0]} is out of range: this bundle has classes "
                                     f"0..{m.num_classes - 1}")
            return classes
        out = []
        for c in conds:
            if not isinstance(c, np.ndarray):
                raise FastervarError("this bundle is text-to-image: give prompt embeddings (or prompts), not class "
                                     "indices")
            if c.ndim != 2 or c.shape[1] != m.text_channels or not 1 <= c.shape[0] <= m.max_text_length:
                raise FastervarError(f"prompt embeddings must be (tokens, {m.text_channels}) with 1 to "
                                     f"{m.max_text_length} tokens; got {tuple(c.shape)}")
            out.append(np.asarray(c, dtype=np.float32))
        return out

    @staticmethod
    def _request(m: Manifest, conds: list) -> dict[str, np.ndarray]:
        """The condition tensors of one batch: labels, or embeddings padded to the longest prompt."""
        if m.conditioning == "class":
            return {LABELS: np.asarray(conds, dtype=np.int64)}
        lengths = np.array([len(c) for c in conds], dtype=np.int64)
        text = np.zeros((len(conds), int(lengths.max()), m.text_channels), dtype=np.float32)
        for row, c in zip(text, conds):
            row[:len(c)] = c
        return {TEXT: text, TEXT_LENGTHS: lengths}

    def _chunk(self, view, conds: list, keys: Sequence[NoiseKey]) -> RuntimeResult:
        m, steps, decoder, chain = view
        if chain is not None:
            return self._chain_chunk(m, chain, conds, keys)
        b = len(conds)
        shape, dtype = m.latent
        state: dict[str, np.ndarray] = {**self._request(m, conds), F_HAT: np.zeros((b, *shape), dtype=dtype)}
        specs = {e.step: e for e in m.steps}
        tokens, seconds = [], []
        for k in range(m.num_steps):
            t0 = time.perf_counter()
            engine = steps.get(k)
            if engine is None:
                tokens.append(np.zeros((b, 0), dtype=np.int64))
            else:
                state[NOISE] = batch_uniform(keys, k, m.noise_width(k))
                out = engine.run({i["name"]: state[i["name"]] for i in specs[k].inputs})
                tokens.append(out.pop(TOKENS))
                state.update({state_name(name): v for name, v in out.items() if state_name(name)})
            seconds.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        images = decoder.run({F_HAT: state[F_HAT]})[IMAGES]
        return RuntimeResult(images, tokens, seconds, time.perf_counter() - t0)

    def _chain_chunk(self, m: Manifest, chain: Engine, conds: list, keys: Sequence[NoiseKey]) -> RuntimeResult:
        """One call for the whole batch (noise draw included); per-step times stay zero, as one
        graph cannot split them."""
        t0 = time.perf_counter()
        feeds = self._request(m, conds)
        for e in m.steps:
            feeds[step_noise(e.step)] = batch_uniform(keys, e.step, m.noise_width(e.step))
        out = chain.run(feeds)
        tokens = [out.get(step_tokens(k), np.zeros((len(conds), 0), dtype=np.int64)) for k in range(m.num_steps)]
        return RuntimeResult(out[IMAGES], tokens, [0.0] * m.num_steps, 0.0, time.perf_counter() - t0)
