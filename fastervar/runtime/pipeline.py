"""Chain a bundle's step engines and decoder into images, with the portable sampler's noise.

Torch-free: numpy in, numpy out. State flows between engines by name (an engine output `out.X` is
the input `X` of later engines), the condition (labels, or prompt embeddings padded to the batch's
longest prompt) and noise come from the request, and requests larger than
the bundle's maximum batch run in chunks, each image still drawing noise from (seed, its index).

A bundle whose profile decides per image (SkipVAR's kind) previews each image's latent after the
decision step, applies the rule (`decision_rule`, numpy), and from then on runs each group of
images that took the same move as a batch of its own, on that move's graphs.
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
    PREVIEW,
    TEXT,
    TEXT_LENGTHS,
    TOKEN_IDS,
    TOKENS,
    EngineSpec,
    Manifest,
    read_manifest,
    state_name,
    step_noise,
    step_tokens,
)
from ..decision_rule import Decision, features
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
    tokens: list[np.ndarray]            # per scale step, (N, p*p) int64; (N, 0) for a skipped step, and
                                        # -1 in the rows of images whose move skipped it
    step_seconds: list[float]           # per scale step (noise draw included), summed over chunks
    decode_seconds: float
    graph_seconds: float = 0.0          # the single-graph engine: steps and decoder in one call
    moves: list[str] | None = None      # per image, the move a per-image decision picked ("none",
                                        # "skip from 10", "uncond from 11")

    @property
    def seconds_total(self) -> float:
        return sum(self.step_seconds) + self.decode_seconds + self.graph_seconds


Step = tuple[Engine, EngineSpec]


@dataclass
class _Decider:
    """A bundle's per-image decision, opened: the rule, the preview engine, and each move's step engines."""

    rule: Decision
    preview: Engine
    moves: dict[tuple[str, int], dict[int, Step]]


@dataclass
class _Set:
    """One aspect's engines: the steps by index, the decoder, or the joined graph alone."""

    manifest: Manifest
    steps: dict[int, Step]
    decoder: Engine | None
    chain: Engine | None
    decider: _Decider | None = None


@dataclass
class _Group:
    """Images of a chunk that run the remaining steps together, with their state."""

    rows: list[int]
    move: tuple[str, int]
    state: dict[str, np.ndarray]

    def engine(self, s: _Set, k: int) -> Step | None:
        kind, first = self.move
        if k < first or kind == "none":
            return s.steps.get(k)
        return None if kind == "skip" else s.decider.moves[self.move].get(k)


Condition = int | str | np.ndarray   # a class index, a prompt, or one prompt's (T, C) float32 embeddings


class Pipeline:
    """A loaded bundle, ready to generate: `Pipeline.from_bundle(path).generate([3, 7], seed=0)`,
    or for a text bundle `generate_items([(embeddings, seed, index), ...], aspect="1:1")`."""

    def __init__(self, manifest: Manifest, provider: str, threads: int = 0, prepack: bool = False,
                 chain: bool = False):
        self.manifest, self.provider = manifest, provider
        self._threads, self._prepack, self._single = threads, prepack, chain
        self._weights: SharedWeights | None = None
        self._sets: dict[str | None, _Set] = {}
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
            why = "decides per image between steps, which one graph cannot" if manifest.decision else \
                "has no single-graph engine; re-export it or"
            raise FastervarError(f"bundle {path} {why}: run its step graphs")
        check_provider(provider)
        return cls(manifest, provider, threads, prepack, chain)

    def _open(self, aspect: str | None) -> _Set:
        if aspect not in self._sets:
            m = self.manifest if aspect == self.manifest.aspect else self.manifest.at_aspect(aspect)
            if self._single:
                self._sets[aspect] = _Set(m, {}, None, create_chain_engine(m, self.provider, self._threads))
            else:
                if self._weights is None and self.provider != "tensorrt":     # plans hold their own weights
                    self._weights = SharedWeights(m)
                engines = self._engines(m, m.engines)
                steps = {e.step: (engine, e) for e, engine in zip(m.steps, engines[:-1])}
                self._sets[aspect] = _Set(m, steps, engines[-1], None, self._decider(m))
        return self._sets[aspect]

    def _engines(self, m: Manifest, specs: list[EngineSpec]) -> list[Engine]:
        return create_engines(m, self.provider, self._threads, self._prepack, self._weights, specs)

    def _decider(self, m: Manifest) -> _Decider | None:
        d = m.decision
        if d is None:
            return None
        moves = {move: dict(zip([e.step for e in specs], zip(self._engines(m, specs), specs))) if specs else {}
                 for move, specs in d.moves.items()}
        return _Decider(d.rule, self._engines(m, [d.preview])[0], moves)

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
            moves=None if parts[0].moves is None else [mv for p in parts for mv in p.moves],
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

    def _chunk(self, view: _Set, conds: list, keys: Sequence[NoiseKey]) -> RuntimeResult:
        m = view.manifest
        if view.chain is not None:
            return self._chain_chunk(m, view.chain, conds, keys)
        b = len(conds)
        shape, dtype = m.latent
        state: dict[str, np.ndarray] = {**self._request(m, conds), F_HAT: np.zeros((b, *shape), dtype=dtype)}
        groups = [_Group(list(range(b)), ("none", 0), state)]
        doubled: set[str] = set()             # state with both guidance halves: 2 x batch rows
        decider, snapshot, moves = view.decider, None, None
        tokens, seconds = [], []
        for k in range(m.num_steps):
            t0 = time.perf_counter()
            ran = []
            for g in groups:
                step = g.engine(view, k)
                if step is None:
                    continue
                engine, spec = step
                g.state[NOISE] = batch_uniform([keys[r] for r in g.rows], k, int(spec.spec(NOISE)["shape"][1]))
                out = engine.run({i["name"]: g.state[i["name"]] for i in spec.inputs})
                ran.append((g.rows, out.pop(TOKENS)))
                for name, v in out.items():
                    if state_name(name):
                        g.state[state_name(name)] = v
                        if spec.spec(name, "outputs")["shape"][:1] == ["rows"]:
                            doubled.add(state_name(name))
                        else:
                            doubled.discard(state_name(name))
            tokens.append(_gather(ran, b))
            if decider is not None and k == decider.rule.compare:
                snapshot = state[F_HAT].copy()
            if decider is not None and k == decider.rule.after:
                moves = self._decide(decider, state[F_HAT], snapshot)
                groups = _split(state, moves, doubled)
            seconds.append(time.perf_counter() - t0)
        f_hat = state[F_HAT]
        if moves is not None:                 # the groups' latents, back in the chunk's order
            f_hat = np.empty_like(f_hat)
            for g in groups:
                f_hat[g.rows] = g.state[F_HAT]
        t0 = time.perf_counter()
        images = view.decoder.run({F_HAT: f_hat})[IMAGES]
        labels = None if moves is None else ["none" if k == "none" else f"{k} from {f}" for k, f in moves]
        return RuntimeResult(images, tokens, seconds, time.perf_counter() - t0, moves=labels)

    @staticmethod
    def _decide(decider: _Decider, f_hat: np.ndarray, snapshot: np.ndarray) -> list[tuple[str, int]]:
        """Each image's move, from the previews of its latent now and at the compare step."""
        d = decider.rule
        new, old = (decider.preview.run({F_HAT: f})[PREVIEW] for f in (f_hat, snapshot))
        return d.moves(features(new, old, d.freq_ratio))

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


def _gather(ran: list[tuple[list[int], np.ndarray]], b: int) -> np.ndarray:
    """A step's tokens for the whole chunk from those of the groups that ran it (-1 elsewhere)."""
    if not ran:
        return np.zeros((b, 0), dtype=np.int64)
    if len(ran) == 1 and len(ran[0][0]) == b:
        return ran[0][1]
    out = np.full((b, ran[0][1].shape[1]), -1, dtype=ran[0][1].dtype)
    for rows, t in ran:
        out[rows] = t
    return out


def _split(state: dict[str, np.ndarray], moves: list[tuple[str, int]], doubled: set[str]) -> list[_Group]:
    """One group per move, in order of first appearance, each with its images' rows of the state
    (both halves of a guided tensor)."""
    b = len(moves)
    groups = []
    for move in dict.fromkeys(moves):
        rows = [i for i, mv in enumerate(moves) if mv == move]
        both = rows + [r + b for r in rows]
        groups.append(_Group(rows, move, {n: v[both if n in doubled else rows] for n, v in state.items()}))
    return groups
