"""The bundle contract: what `export` writes and the runtime reads, checked before it is trusted.

A bundle is a directory with `manifest.json`, one ONNX graph per executed scale step, a decoder
graph, usually the whole generation joined into one graph, one shared weights file and, optionally,
TensorRT plans. A text-to-image bundle takes prompt embeddings instead of class labels and holds
one such set of graphs per aspect (all reading the one weights file), and optionally its text
encoder's graph with the tokenizer. This module holds every tensor name the graphs exchange, the manifest's schema,
and the checks that make a bundle safe to open:
- every path it names is relative and resolves inside the bundle (no absolute paths, no `..`, no
  symlink that leaves it);
- the tensor table fits its weights file: offsets and lengths within it, no overlaps, and each
  shape and dtype the size of its bytes;
- the engines form a runnable chain: steps in order, each reading only what the request or an
  earlier step provides, one decoder last;
- a profile that decides per image between steps (SkipVAR's kind) comes with its preview graph and
  the step graphs of every move its rule can pick, each reading only what the steps before the
  move and the move's earlier graphs provide, and no joined graph;
- with `verify`, every file matches its SHA-256 (a swapped, truncated or edited file is named).
A bundle that breaks any of it is refused with one line before any file it names is opened.
Torch-free: export and the runtime both import it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from .decision_rule import MOVES, Decision
from .errors import FastervarError
from .profile import ProfileError, check_decision
from .utils.hashing import file_sha256

# 2: noise is one uniform per token, (B, n); bundles of format 1 took (B, n, V) and must be re-exported.
# 3: a bundle names its conditioning (class labels, or text embeddings), and a text bundle holds one
# set of graphs per aspect; format 2 bundles (class-conditional, one set) are still read.
FORMAT = "fastervar-bundle/3"
READABLE_FORMATS = ("fastervar-bundle/2", FORMAT)
MANIFEST = "manifest.json"
WEIGHTS = "weights.bin"
PRECISIONS = ("fp32", "fp16", "int8")
ENGINE_PRECISIONS = PRECISIONS + ("mixed",)       # the joined graph of an int8 bundle with an fp32 decoder
DTYPES = ("float32", "float16", "int8", "uint8", "int32", "int64", "bool")
# What the runtime allocates per image before any graph runs is bounded, so a manifest cannot make it
# allocate without limit: no step samples more than 2^24 values, no latent holds more than 2^26.
MAX_NOISE = 1 << 24
MAX_LATENT = 1 << 26

# -- tensor names ------------------------------------------------------------------------------
LABELS = "labels"          # (B,) int64 class indices
TEXT = "text"              # (B, T, C) float32 prompt embeddings, zero beyond each prompt's length
TEXT_LENGTHS = "text_lengths"   # (B,) int64 each prompt's length in tokens, 1..T
TOKEN_IDS = "token_ids"    # (B, T) int64 the prompts' T5 token ids, padded past each length (text encoder)
F_HAT = "f_hat"            # (B, C, H, W) the accumulated latent
NOISE = "noise"            # (B, n) one uniform per sampled token of the step
TOKENS = "tokens"          # (B, n) int64 the step's tokens
IMAGES = "images"          # (B, H, W, 3) uint8
PREVIEW = "preview"        # (B, 3, h, w) float32 a small decode of the latent, in [-1, 1], for a per-image decision
LOGITS = "logits"          # a step's raw logits: an output only graphs traced to check numerics have
OUT = "out."               # a step graph's output `out.X` is the input `X` of the later graphs


CONDITIONING = {"class": (LABELS,), "text": (TEXT, TEXT_LENGTHS)}


def condition_names(kind: str) -> tuple[str, ...]:
    """The request tensors a bundle conditioned on `kind` reads, in graph order."""
    return CONDITIONING[kind]


def output(name: str) -> str:
    """The output name under which a step graph hands state `name` on."""
    return OUT + name


def state_name(name: str) -> str | None:
    """The state an output hands on (`out.X` -> `X`); None for an output that is no state."""
    return name[len(OUT):] if name.startswith(OUT) else None


def step_noise(step: int) -> str:
    """Step `step`'s noise input in the joined whole-generation graph."""
    return f"{NOISE}.{step}"


def step_tokens(step: int) -> str:
    """Step `step`'s tokens output in the joined whole-generation graph."""
    return f"{TOKENS}.{step}"


def cache_names(depth: int) -> list[str]:
    """Every block's K and V cache."""
    return [f"cache.{i}.{kv}" for i in range(depth) for kv in ("k", "v")]


def hidden_name(step: int) -> str:
    """Step `step`'s last block output, kept for block-level restoration."""
    return f"hidden.{step}"


def branch_names(step: int, depth: int, layers: tuple[int, int] | list[int] | None = None) -> list[str]:
    """The cached sublayer outputs of `step`, for every block or only those in `layers` [first, end)."""
    lo, hi = layers or (0, depth)
    return [f"branch.{step}.{i}.{part}" for i in range(lo, hi) for part in ("attn", "ffn")]


def is_restore_state(name: str) -> bool:
    """Cached outputs a reducing step restores from (the runtime keeps them until they are read)."""
    return name.startswith(("hidden.", "branch."))


# -- the manifest ------------------------------------------------------------------------------
class BundleError(FastervarError):
    """A bundle that is missing, corrupt, unsafe, or not one this runtime can run."""


@dataclass(frozen=True)
class EngineSpec:
    """One graph in call order: a scale step (`step` set) or the decoder (or the joined graph)."""

    name: str
    step: int | None
    graph: str
    sha256: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    initializers: list[str]
    plan: str | None = None
    plan_sha256: str | None = None
    precision: str = "fp32"                 # fp32, fp16, int8 (int8 weights in its linears or convolutions), mixed

    def spec(self, name: str, kind: str = "inputs") -> dict[str, Any] | None:
        """The input (or output) tensor spec called `name`, if the graph has one."""
        return next((s for s in getattr(self, kind) if s["name"] == name), None)


@dataclass(frozen=True)
class DecisionSpec:
    """A per-image decision in a bundle: its rule, the preview graph, and for every move the rule
    can pick, the step graphs that replace the plan's from the move's first step ([] for a skip)."""

    rule: Decision
    preview: EngineSpec
    moves: dict[tuple[str, int], list[EngineSpec]]


@dataclass(frozen=True)
class Manifest:
    """A checked bundle, seen at one aspect: a text bundle holds one set of engines per aspect
    (`at_aspect` picks another); a class-conditional bundle has one set and no aspects."""

    root: Path
    data: dict[str, Any]
    engines: list[EngineSpec]
    chain: EngineSpec | None = None          # all steps and the decoder as one graph, where exported
    aspect: str | None = None

    @property
    def conditioning(self) -> str:
        """'class' (labels in) or 'text' (prompt embeddings and lengths in)."""
        return str(self.data["model"].get("conditioning", {"kind": "class"})["kind"])

    @property
    def condition_names(self) -> tuple[str, ...]:
        return condition_names(self.conditioning)

    @property
    def num_classes(self) -> int | None:
        n = self.data["model"].get("num_classes")
        return None if n is None else int(n)

    @property
    def text_channels(self) -> int | None:
        """The width of the prompt embeddings a text bundle takes."""
        c = self.data["model"].get("conditioning", {}).get("channels")
        return None if c is None else int(c)

    @property
    def max_text_length(self) -> int | None:
        n = self.data["model"].get("conditioning", {}).get("max_length")
        return None if n is None else int(n)

    @property
    def num_steps(self) -> int:
        return len(self.data["steps"])

    @property
    def text_encoder(self) -> EngineSpec | None:
        """The prompt encoder's graph (token ids and lengths in, embeddings out), where exported."""
        raw = self.data.get("text_encoder")
        return _engine_spec(raw) if raw else None

    @property
    def tokenizer(self) -> tuple[Path, int] | None:
        """The bundled `tokenizer.json` and the longest prompt the encoder takes, in tokens."""
        raw = self.data.get("text_encoder")
        return (self.path(raw["tokenizer"]), int(raw["max_length"])) if raw else None

    @property
    def aspects(self) -> list[str]:
        """The aspects a text bundle draws, default first; [] for a class-conditional bundle."""
        return [a["name"] for a in self.data.get("aspects") or []]

    def at_aspect(self, name: str) -> Manifest:
        """The same bundle seen at aspect `name` (e.g. '1:1')."""
        for a in self.data.get("aspects") or []:
            if a["name"] == name:
                raw = a.get("chain")
                return Manifest(self.root, self.data, [_engine_spec(e) for e in a["engines"]],
                                _engine_spec(raw) if raw else None, name)
        have = ", ".join(self.aspects) or "none: it is not a text bundle"
        raise BundleError(f"bundle {self.root} has no aspect {name!r}; it holds {have}")

    @property
    def decision(self) -> DecisionSpec | None:
        """The per-image decision of this aspect's engines, where the profile has one."""
        rule = self.data["profile"]["json"].get("decision")
        if rule is None:
            return None
        holder = self.data if self.aspect is None else next(a for a in self.data["aspects"] if a["name"] == self.aspect)
        raw = holder["decision"]
        moves = {(m["kind"], int(m["first"])): [_engine_spec(e) for e in m["engines"]] for m in raw["moves"]}
        return DecisionSpec(Decision.from_profile(rule), _engine_spec(raw["preview"]), moves)

    @property
    def max_batch(self) -> int:
        return int(self.data["max_batch"])

    @property
    def weights(self) -> dict[str, Any]:
        return self.data["weights"]

    @property
    def steps(self) -> list[EngineSpec]:
        return [e for e in self.engines if e.step is not None]

    @property
    def decoder(self) -> EngineSpec:
        return self.engines[-1]

    @property
    def latent(self) -> tuple[list[int], str]:
        """The latent's per-image shape and dtype, as the first step graph reads it."""
        spec = self.steps[0].spec(F_HAT)
        return list(spec["shape"][1:]), spec["dtype"]

    def noise_width(self, step: int) -> int:
        """Uniforms step `step` reads per image."""
        engine = next(e for e in self.steps if e.step == step)
        return int(engine.spec(NOISE)["shape"][1])

    def path(self, name: str) -> Path:
        """A file the manifest names, inside the bundle (checked when the manifest was read)."""
        return self.root / name


def read_manifest(root: str | os.PathLike, verify: bool = True) -> Manifest:
    """Parse and check a bundle's manifest (see the module docstring); with `verify`, hash every
    file it names. Every problem is a BundleError with one line."""
    root = Path(root)
    if not root.is_dir():
        raise BundleError(f"bundle {root} does not exist or is not a directory")
    _no_escaping_links(root)
    path = _inside(root, MANIFEST, MANIFEST, missing=f"{root} is not a bundle: it has no {MANIFEST}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON ({exc})") from None
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not isinstance(data, dict) or data.get("format") not in READABLE_FORMATS:
        got = data.get("format") if isinstance(data, dict) else None
        raise BundleError(f"{path}: bundle format {_show(got)} is not supported; this runtime reads {FORMAT!r} "
                          f"(re-export the bundle with this version of fastervar)")
    try:
        manifest = _check(root, data)
    except _Invalid as exc:
        raise BundleError(f"{path}: {exc}") from None
    if verify:
        for name, digest in _files(manifest):
            if file_sha256(manifest.path(name)) != digest:
                raise BundleError(f"{manifest.path(name)} does not match the hash in {MANIFEST}: the file is "
                                  f"corrupt or was changed")
    return manifest


# -- checks ------------------------------------------------------------------------------------
class _Invalid(Exception):
    """A schema violation, reported by `read_manifest` with the manifest's path."""


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _is_hex64(v: Any) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _field(obj: Any, key: str, where: str, ok, want: str, optional: bool = False) -> Any:
    """obj[key], checked by `ok`; a missing or bad value is one line naming the field."""
    if not isinstance(obj, dict):
        raise _Invalid(f"field {where or 'manifest'} must be an object, got {_show(obj)}")
    name = _join(where, key)
    if key not in obj or obj[key] is None:
        if optional:
            return None
        raise _Invalid(f"field {name} is missing")
    value = obj[key]
    if not ok(value):
        raise _Invalid(f"field {name} must be {want}, got {_show(value)}")
    return value


def _list(obj: Any, key: str, where: str, ok, want: str, optional: bool = False) -> list:
    items = _field(obj, key, where, lambda v: isinstance(v, list), "a list", optional)
    for i, v in enumerate(items or []):
        if not ok(v):
            raise _Invalid(f"field {_join(where, key)}[{i}] must be {want}, got {_show(v)}")
    return items


def _relative(name: Any) -> bool:
    if not isinstance(name, str) or not name or "\0" in name or "\\" in name:
        return False
    p = PurePosixPath(name)
    return not p.is_absolute() and ".." not in p.parts


def _inside(root: Path, name: Any, where: str, missing: str | None = None) -> Path:
    """root/name as a regular file that resolves inside the bundle, before anything opens it."""
    if not _relative(name):
        raise _Invalid(f"field {where} must be a relative path inside the bundle, got {_show(name)}")
    path = root / name
    resolved, top = path.resolve(), root.resolve()
    if not resolved.is_relative_to(top):
        raise _Invalid(f"field {where} ({name}) leads outside the bundle (to {resolved})")
    if not resolved.is_file():
        raise BundleError(missing or f"bundle {root} is missing {name}")
    return path


def _no_escaping_links(root: Path) -> None:
    """No symlink anywhere in the bundle may point outside it: onnxruntime opens the weights a
    graph names itself, and would follow one."""
    top = root.resolve()
    for folder, dirs, files in os.walk(root):
        for entry in dirs + files:
            p = Path(folder) / entry
            if p.is_symlink() and not p.resolve().is_relative_to(top):
                raise BundleError(f"bundle {root}: {p.relative_to(root)} is a link to {p.resolve()}, outside the "
                                  f"bundle")


def _tensor_spec(spec: Any, where: str) -> dict[str, Any]:
    _field(spec, "name", where, lambda v: isinstance(v, str) and v, "a tensor name")
    _field(spec, "dtype", where, lambda v: v in DTYPES, f"one of {', '.join(DTYPES)}")
    _list(spec, "shape", where, lambda d: (_is_int(d) and d >= 0) or (isinstance(d, str) and d),
          "a size or an axis name")
    return spec


def _engine_spec(raw: dict[str, Any]) -> EngineSpec:
    return EngineSpec(**{k: raw.get(k) for k in ("name", "step", "graph", "sha256", "inputs", "outputs",
                                                 "initializers", "plan", "plan_sha256")},
                      precision=raw.get("precision") or "fp32")


def _engine(raw: Any, where: str, root: Path, tensors: dict, steps: int, decoder: bool) -> EngineSpec:
    _field(raw, "name", where, lambda v: isinstance(v, str) and v, "a name")
    if decoder:
        if raw.get("step") is not None:
            raise _Invalid(f"field {where}.step must be null: the last engine is the decoder")
    elif not (_is_int(raw.get("step")) and 0 <= raw["step"] < steps):
        raise _Invalid(f"field {where}.step must be a step in 0..{steps - 1} (only the last engine is the "
                       f"decoder), got {_show(raw.get('step'))}")
    _inside(root, raw.get("graph"), f"{where}.graph")
    _field(raw, "sha256", where, _is_hex64, "a SHA-256 hex digest")
    for kind in ("inputs", "outputs"):
        specs = _list(raw, kind, where, lambda v: isinstance(v, dict), "a tensor spec")
        names = [_tensor_spec(s, f"{where}.{kind}[{i}]")["name"] for i, s in enumerate(specs)]
        if len(set(names)) != len(names):
            raise _Invalid(f"field {where}.{kind} names a tensor twice")
    _list(raw, "initializers", where, lambda v: isinstance(v, str) and v in tensors,
          "a tensor of the weights table")
    if _field(raw, "plan", where, lambda v: isinstance(v, str), "a file name", optional=True) is not None:
        _inside(root, raw["plan"], f"{where}.plan")
        _field(raw, "plan_sha256", where, _is_hex64, "a SHA-256 hex digest")
    _field(raw, "precision", where, lambda v: v in ENGINE_PRECISIONS, f"one of {', '.join(ENGINE_PRECISIONS)}",
           optional=True)
    return _engine_spec(raw)


def _tensor_table(root: Path, weights: dict) -> dict[str, dict]:
    """Each tensor within the weights file, the size of its shape and dtype, none overlapping."""
    size = _inside(root, weights.get("file"), "weights.file").stat().st_size
    _field(weights, "sha256", "weights", _is_hex64, "a SHA-256 hex digest")
    _field(weights, "bytes", "weights", lambda v: _is_int(v) and v == size, f"the file's size ({size})")
    table = _field(weights, "tensors", "weights", lambda v: isinstance(v, dict), "an object")
    spans = []
    for name, t in table.items():
        where = f"weights.tensors[{name!r}]"
        dtype = _field(t, "dtype", where, lambda v: v in DTYPES, f"one of {', '.join(DTYPES)}")
        shape = _list(t, "shape", where, lambda d: _is_int(d) and d >= 0, "a size")
        offset = _field(t, "offset", where, lambda v: _is_int(v) and v >= 0, "a non-negative integer")
        length = _field(t, "length", where, lambda v: _is_int(v) and v >= 0, "a non-negative integer")
        itemsize = np.dtype(dtype).itemsize
        need = math.prod(shape) * itemsize
        if offset % itemsize:
            raise _Invalid(f"{where}: offset {offset} is not aligned to its {dtype} elements")
        if need != length:
            raise _Invalid(f"{where}: a {dtype} tensor of shape {shape} is {need} bytes, the table says {length}")
        if offset + length > size:
            raise _Invalid(f"{where}: bytes {offset}..{offset + length} lie beyond the end of the weights file "
                           f"({size} bytes)")
        if length:
            spans.append((offset, offset + length, name))
    spans.sort()
    for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
        if start < end:
            raise _Invalid(f"weights.tensors {a!r} and {b!r} overlap in the weights file")
    return table


def _chain_order(engines: list[EngineSpec], request: tuple[str, ...], where: str = "") -> None:
    """Each step reads the request's tensors or what an earlier step hands on; the decoder reads
    the latent and writes images."""
    steps, decoder = engines[:-1], engines[-1]
    if not steps:
        raise _Invalid(f"{where}engines has no scale-step engine")
    order = [e.step for e in steps]
    if order != sorted(set(order)):
        raise _Invalid(f"{where}engines must list each step once, in order; got steps {order}")
    available = {*request, F_HAT, NOISE}
    for i, e in enumerate(steps):
        at = f"{where}engines[{i}]"
        _check_step_io(e, at)
        missing = [s["name"] for s in e.inputs if s["name"] not in available]
        if missing:
            raise _Invalid(f"{at} ({e.name}) reads {missing[0]!r}, which no earlier step provides")
        available |= {state_name(s["name"]) for s in e.outputs if state_name(s["name"])}
    latent = steps[0].spec(F_HAT)["shape"]
    if (len(latent) < 2 or not all(_is_int(d) and d > 0 for d in latent[1:])
            or math.prod(latent[1:]) > MAX_LATENT):
        raise _Invalid(f"{where}engines[0]: input {F_HAT!r} must have a batch axis and fixed sizes (at most "
                       f"{MAX_LATENT} values), got {latent}")
    if [s["name"] for s in decoder.inputs] != [F_HAT] or decoder.spec(IMAGES, "outputs") is None:
        raise _Invalid(f"the last engine ({decoder.name}) must be the decoder: {F_HAT!r} in, {IMAGES!r} out")


def _check_step_io(e: EngineSpec, at: str) -> None:
    """A step graph reads the latent and its noise, [batch, n] uniforms, and gives tokens and the latent."""
    for name, kind in ((F_HAT, "inputs"), (NOISE, "inputs"), (TOKENS, "outputs"), (output(F_HAT), "outputs")):
        if e.spec(name, kind) is None:
            raise _Invalid(f"{at} ({e.name}) has no {kind[:-1]} {name!r}")
    noise = e.spec(NOISE)["shape"]
    if len(noise) != 2 or not _is_int(noise[1]) or not 1 <= noise[1] <= MAX_NOISE:
        raise _Invalid(f"{at}: input {NOISE!r} must have shape [batch, n] with 1 <= n <= {MAX_NOISE}, got {noise}")


def _check_chain(raw: Any, where: str, root: Path, tensors: dict, steps: list[EngineSpec], num_steps: int,
                 request: tuple[str, ...]) -> EngineSpec:
    chain = _engine(raw, where, root, tensors, num_steps, decoder=True)
    want_in = set(request) | {step_noise(e.step) for e in steps}
    want_out = {IMAGES} | {step_tokens(e.step) for e in steps}
    got_in, got_out = {s["name"] for s in chain.inputs}, {s["name"] for s in chain.outputs}
    if got_in != want_in or not want_out <= got_out:
        raise _Invalid(f"{where}'s tensors do not match its steps: inputs {sorted(got_in)}, outputs {sorted(got_out)}")
    return chain


def _engine_set(holder: dict, where: str, root: Path, tensors: dict, num_steps: int,
                request: tuple[str, ...], rule: Decision | None) -> tuple[list[EngineSpec], EngineSpec | None]:
    """One set of engines (steps, then the decoder) and its joined graph, checked."""
    raw = _list(holder, "engines", where, lambda v: isinstance(v, dict), "an engine")
    prefix = f"{where}." if where else ""
    if not raw:
        raise _Invalid(f"field {prefix}engines is empty")
    engines = [_engine(e, f"{prefix}engines[{i}]", root, tensors, num_steps, decoder=i == len(raw) - 1)
               for i, e in enumerate(raw)]
    _chain_order(engines, request, prefix)
    if rule is not None and holder.get("chain") is not None:
        raise _Invalid(f"field {prefix}chain must be null: a per-image decision cannot run as one graph")
    chain = None
    if holder.get("chain") is not None:
        chain = _check_chain(holder["chain"], f"{prefix}chain", root, tensors, engines[:-1], num_steps, request)
    if rule is not None:
        _check_decision_engines(holder, prefix, root, tensors, num_steps, request, engines[:-1], rule)
    return engines, chain


def _check_decision_engines(holder: dict, prefix: str, root: Path, tensors: dict, num_steps: int,
                            request: tuple[str, ...], steps: list[EngineSpec], rule: Decision) -> None:
    """The preview graph, and one entry per move of the rule whose graphs read only what the plan's
    steps before the move, and the move's earlier graphs, provide."""
    where = f"{prefix}decision"
    raw = _field(holder, "decision", prefix.rstrip("."), lambda v: isinstance(v, dict),
                 "an object (the profile decides per image)")
    preview = _engine(raw.get("preview"), f"{where}.preview", root, tensors, num_steps, decoder=True)
    if [s["name"] for s in preview.inputs] != [F_HAT] or preview.spec(PREVIEW, "outputs") is None:
        raise _Invalid(f"{where}.preview must take {F_HAT!r} and give {PREVIEW!r}")
    moves = _list(raw, "moves", where, lambda v: isinstance(v, dict), "a move")
    seen = set()
    for i, m in enumerate(moves):
        at = f"{where}.moves[{i}]"
        kind = _field(m, "kind", at, lambda v: v in MOVES, f"one of {', '.join(MOVES)}")
        first = _field(m, "first", at, lambda v: _is_int(v) and rule.after < v < num_steps,
                       f"a step after {rule.after}")
        seen.add((kind, first))
        engines = [_engine(e, f"{at}.engines[{j}]", root, tensors, num_steps, decoder=False)
                   for j, e in enumerate(_list(m, "engines", at, lambda v: isinstance(v, dict), "an engine"))]
        if kind == "skip" and engines:
            raise _Invalid(f"field {at}.engines must be empty: a skip runs no graph")
        order = [e.step for e in engines]
        if order != sorted(set(order)) or any(k < first for k in order):
            raise _Invalid(f"field {at}.engines must list steps from {first} on, each once, in order; got {order}")
        available = {*request, F_HAT, NOISE}
        for e in steps:
            if e.step < first:
                available |= {state_name(s["name"]) for s in e.outputs if state_name(s["name"])}
        for j, e in enumerate(engines):
            _check_step_io(e, f"{at}.engines[{j}]")
            missing = [s["name"] for s in e.inputs if s["name"] not in available]
            if missing:
                raise _Invalid(f"{at}.engines[{j}] ({e.name}) reads {missing[0]!r}, which nothing before it provides")
            available |= {state_name(s["name"]) for s in e.outputs if state_name(s["name"])}
    missing_moves = [m for m in rule.move_set() if m not in seen]
    if missing_moves:
        raise _Invalid(f"{where}.moves has no graphs for the move {missing_moves[0][0]} from step {missing_moves[0][1]}, "
                       f"which the profile's rule can pick")


def _conditioning(model: dict) -> str:
    """The model's conditioning kind, with the fields that kind needs checked."""
    cond = _field(model, "conditioning", "model", lambda v: isinstance(v, dict), "an object", optional=True)
    kind = "class" if cond is None else _field(cond, "kind", "model.conditioning", lambda v: v in CONDITIONING,
                                               f"one of {', '.join(CONDITIONING)}")
    if kind == "class":
        _field(model, "num_classes", "model", lambda v: _is_int(v) and v > 0, "a positive integer")
    else:
        for key in ("channels", "max_length"):
            _field(cond, key, "model.conditioning", lambda v: _is_int(v) and v > 0, "a positive integer")
    return kind


def _check(root: Path, data: dict) -> Manifest:
    model = _field(data, "model", "", lambda v: isinstance(v, dict), "an object")
    _field(model, "config", "model", lambda v: isinstance(v, str), "a model name")
    kind = _conditioning(model)
    steps = _list(data, "steps", "", lambda v: isinstance(v, dict), "a step")
    if not steps:
        raise _Invalid("field steps is empty")
    profile = _field(data, "profile", "", lambda v: isinstance(v, dict), "an object")
    _field(profile, "name", "profile", lambda v: isinstance(v, str), "a name")
    pjson = _field(profile, "json", "profile", lambda v: isinstance(v, dict), "the profile as an object")
    _list(pjson, "steps", "profile.json", lambda v: isinstance(v, dict), "a step plan")
    rule = None
    if pjson.get("decision") is not None:
        try:
            check_decision(pjson["decision"], len(steps))
        except ProfileError as exc:
            raise _Invalid(f"profile.json: {exc}") from None
        rule = Decision.from_profile(pjson["decision"])
    sampler = _field(data, "sampler", "", lambda v: isinstance(v, dict), "an object")
    _field(sampler, "name", "sampler", lambda v: v == "portable", "'portable'")
    for key in ("cfg", "top_p"):
        _field(sampler, key, "sampler", _is_num, "a number")
    _field(sampler, "top_k", "sampler", lambda v: _is_int(v) and v >= 0, "a non-negative integer")
    _field(data, "precision", "", lambda v: v in PRECISIONS, f"one of {', '.join(PRECISIONS)}")
    _field(data, "max_batch", "", lambda v: _is_int(v) and v >= 1, "a positive integer")
    weights = _field(data, "weights", "", lambda v: isinstance(v, dict), "an object")
    tensors = _tensor_table(root, weights)
    request = condition_names(kind)
    if kind == "class":
        engines, chain = _engine_set(data, "", root, tensors, len(steps), request, rule)
        return Manifest(root, data, engines, chain)
    aspects = _list(data, "aspects", "", lambda v: isinstance(v, dict), "an aspect")
    if not aspects:
        raise _Invalid("field aspects is empty: a text bundle holds at least one aspect")
    names = [_field(a, "name", f"aspects[{i}]", lambda v: isinstance(v, str) and v, "a name like '1:1'")
             for i, a in enumerate(aspects)]
    if len(set(names)) != len(names):
        raise _Invalid("field aspects names an aspect twice")
    for i, a in enumerate(aspects):
        _field(a, "h_div_w", f"aspects[{i}]", lambda v: _is_num(v) and v > 0, "a positive number")
        _engine_set(a, f"aspects[{i}]", root, tensors, len(steps), request, rule)
    if data.get("text_encoder") is not None:
        _check_text_encoder(data["text_encoder"], root, tensors, len(steps))
    return Manifest(root, data, [], None).at_aspect(names[0])


def _check_text_encoder(raw: Any, root: Path, tensors: dict, num_steps: int) -> None:
    enc = _engine(raw, "text_encoder", root, tensors, num_steps, decoder=True)
    if [s["name"] for s in enc.inputs] != [TOKEN_IDS, TEXT_LENGTHS] or enc.spec(TEXT, "outputs") is None:
        raise _Invalid(f"text_encoder must take {TOKEN_IDS!r} and {TEXT_LENGTHS!r} and give {TEXT!r}")
    _inside(root, raw.get("tokenizer"), "text_encoder.tokenizer")
    _field(raw, "tokenizer_sha256", "text_encoder", _is_hex64, "a SHA-256 hex digest")
    _field(raw, "max_length", "text_encoder", lambda v: _is_int(v) and v > 0, "a positive integer")


def _files(manifest: Manifest) -> list[tuple[str, str]]:
    """(file, digest) of everything the manifest names, at every aspect."""
    views = [manifest.at_aspect(a) for a in manifest.aspects] or [manifest]
    engines = [e for v in views for e in v.engines + ([v.chain] if v.chain else [])]
    for v in views:
        d = v.decision
        if d is not None:
            engines += [d.preview] + [e for graphs in d.moves.values() for e in graphs]
    files = [(manifest.weights["file"], manifest.weights["sha256"])]
    files += [(e.graph, e.sha256) for e in engines]
    files += [(e.plan, e.plan_sha256) for e in engines if e.plan]
    if manifest.text_encoder is not None:
        raw = manifest.data["text_encoder"]
        files += [(raw["graph"], raw["sha256"]), (raw["tokenizer"], raw["tokenizer_sha256"])]
    return list(dict.fromkeys(files))
