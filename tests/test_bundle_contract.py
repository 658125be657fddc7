"""The bundle contract: a manifest is checked before anything it names is opened, and every bundle
that breaks it is refused with one line. A fuzzer deletes fields, changes types, points paths
outside the bundle (absolute, `..`, symlinks) and breaks the tensor table; every case must load a
valid bundle or raise a one-line FastervarError, and nothing outside the bundle may be opened."""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fastervar import bundle_contract as contract
from fastervar.cli import main
from fastervar.errors import FastervarError
from fastervar.export.bundle import export_bundle
from fastervar.models.loading import random_model
from fastervar.models.sampling import SamplingSettings
from fastervar.profile import identity
from fastervar.runtime.pipeline import Pipeline

from .test_cli import assert_bad_input

_OPENED_OUTSIDE: list[str] = []
_WATCH: list[Path] = []


def _audit(event: str, args: tuple) -> None:
    """Records every file Python opens under a watched folder (the fuzzer's "outside" folder)."""
    if event != "open" or not _WATCH or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    path = os.path.realpath(os.fsdecode(args[0]))
    if any(path.startswith(str(w)) for w in _WATCH):
        _OPENED_OUTSIDE.append(path)


sys.addaudithook(_audit)


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """A tiny identity bundle, and beside it an 'outside' folder holding copies of its files: a
    manifest that reaches them would load fine if it were let, so only the checks stop it."""
    root = tmp_path_factory.mktemp("contract")
    model = random_model("tiny")
    bundle = export_bundle(model, identity(model.cfg), root / "bundle", SamplingSettings(), max_batch=2,
                           progress=False)
    shutil.copytree(bundle, root / "outside")
    return bundle


def _fresh(made: Path, into: Path) -> Path:
    """A copy of the bundle whose large files are hard links (the fuzzer never writes into them)."""
    if into.exists():
        shutil.rmtree(into)
    shutil.copytree(made, into, copy_function=os.link)
    return into


def _paths(node, prefix=()) -> list[tuple]:
    """Every path to a value in a JSON tree."""
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, prefix + (i,))
    return out


def _parent(tree, path):
    for key in path[:-1]:
        tree = tree[key]
    return tree


ODD_VALUES = [None, "x", -1, 0, 1, 1.5, True, [], {}, "../outside/weights.bin", "/etc/hostname", 2**40,
              [1, 2], {"name": 1}]


def _outside_refs(outside: Path) -> list[str]:
    return [str(outside / "weights.bin"), "../outside/weights.bin", "../outside/step0.onnx",
            "sub/../../outside/chain.onnx", "link-out", "missing.onnx", "", ".", "manifest.json/x"]


@st.composite
def mutations(draw, manifest: dict):
    """A damaged manifest and the links to make beside it."""
    m = copy.deepcopy(manifest)
    links: dict[str, str] = {}
    kind = draw(st.sampled_from(["delete", "retype", "path", "table", "link-file"]))
    paths = _paths(m)
    if kind == "delete":
        path = draw(st.sampled_from(paths))
        parent = _parent(m, path)
        del parent[path[-1]]
    elif kind == "retype":
        path = draw(st.sampled_from(paths))
        _parent(m, path)[path[-1]] = draw(st.sampled_from(ODD_VALUES))
    elif kind == "path":
        fields = [("weights", "file")] + [("engines", i, "graph") for i in range(len(m["engines"]))]
        fields += [("engines", i, "plan") for i in range(len(m["engines"]))] + [("chain", "graph")]
        path = draw(st.sampled_from(fields))
        _parent(m, path)[path[-1]] = draw(st.sampled_from(_outside_refs(Path("OUTSIDE"))))
        links["link-out"] = "OUTSIDE/weights.bin"
    elif kind == "table":
        tensors = m["weights"]["tensors"]
        names = sorted(tensors)
        t = tensors[draw(st.sampled_from(names))]
        change = draw(st.sampled_from(["offset-past-end", "overlap", "length", "shape", "dtype", "misaligned"]))
        if change == "offset-past-end":
            t["offset"] = m["weights"]["bytes"] - draw(st.integers(0, 8))
        elif change == "overlap":
            other = tensors[draw(st.sampled_from(names))]
            t["offset"] = other["offset"] + draw(st.integers(0, 4)) * 4
        elif change == "length":
            t["length"] += draw(st.sampled_from([-4, -1, 1, 4]))
        elif change == "shape":
            t["shape"] = t["shape"] + [draw(st.integers(0, 3))]
        elif change == "dtype":
            t["dtype"] = draw(st.sampled_from(["float64", "int8", "float16", "complex64", "object"]))
        else:
            t["offset"] += draw(st.integers(1, 3))
    else:
        victim = draw(st.sampled_from(["weights.bin", "step0.onnx", "decoder.onnx", "chain.onnx", "manifest.json"]))
        links[victim] = f"OUTSIDE/{victim}"
    return m, links


def _apply(bundle: Path, outside: Path, manifest: dict, links: dict[str, str]) -> None:
    text = json.dumps(manifest).replace("OUTSIDE", str(outside))
    (bundle / contract.MANIFEST).unlink()
    (bundle / contract.MANIFEST).write_text(text)
    for name, target in links.items():
        (bundle / name).unlink(missing_ok=True)
        os.symlink(target.replace("OUTSIDE", str(outside)), bundle / name)


def _manifest_files_inside(bundle: Path) -> bool:
    data = json.loads((bundle / contract.MANIFEST).read_text())
    names = [data["weights"]["file"]] + [e["graph"] for e in data["engines"]]
    names += [data["chain"]["graph"]] if data.get("chain") else []
    top = bundle.resolve()
    return all((bundle / n).resolve().is_relative_to(top) for n in names)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(data=st.data())
def test_fuzzed_manifests_load_or_fail_in_one_line_and_never_open_outside(made, tmp_path, data):
    outside = made.parent / "outside"
    base = json.loads((made / contract.MANIFEST).read_text())
    manifest, links = data.draw(mutations(base))
    bundle = _fresh(made, tmp_path / "b")
    _apply(bundle, outside, manifest, links)
    chain = data.draw(st.sampled_from([None, False]))
    result = run_or_refuse(outside, lambda: Pipeline.from_bundle(bundle, chain=chain).generate([1], seed=0))
    if result is not None:
        assert result.images.shape[0] == 1 and _manifest_files_inside(bundle)


def run_or_refuse(outside: Path, run):
    """`run()` (open a damaged bundle and generate) either returns or fails in one line, and never
    opens a file under `outside`; its result, or None when it was refused."""
    _OPENED_OUTSIDE.clear()
    _WATCH[:] = [outside.resolve()]
    try:
        result = run()
    except FastervarError as exc:
        assert str(exc) and "\n" not in str(exc), str(exc)
        event("refused")
        result = None
    else:
        event("loaded and ran")
    finally:
        _WATCH.clear()
    assert not _OPENED_OUTSIDE, f"opened outside the bundle: {_OPENED_OUTSIDE}"
    return result


def _craft(made: Path, tmp_path: Path, edit) -> Path:
    bundle = _fresh(made, tmp_path / "crafted")
    manifest = json.loads((made / contract.MANIFEST).read_text())
    edit(manifest)
    (bundle / contract.MANIFEST).unlink()
    (bundle / contract.MANIFEST).write_text(json.dumps(manifest))
    return bundle


@pytest.mark.parametrize("where, value, message", [
    ("graph", "ABSOLUTE", "must be a relative path inside the bundle"),
    ("graph", "../outside/step0.onnx", "must be a relative path inside the bundle"),
    ("weights", "../outside/weights.bin", "must be a relative path inside the bundle"),
    ("weights", "ABSOLUTE", "must be a relative path inside the bundle"),
])
def test_run_refuses_a_bundle_pointing_outside_itself(made, tmp_path, where, value, message):
    outside = made.parent / "outside"
    target = str(outside / ("weights.bin" if where == "weights" else "step0.onnx")) if value == "ABSOLUTE" else value

    def edit(m):
        if where == "weights":
            m["weights"]["file"] = target
        else:
            m["engines"][0]["graph"] = target
    bundle = _craft(made, tmp_path, edit)
    r = CliRunner().invoke(main, ["run", str(bundle), "--class", "1", "--out", str(tmp_path / "png")])
    assert_bad_input(r, message)
    assert not (tmp_path / "png").exists()


def test_run_refuses_a_symlink_out_of_the_bundle(made, tmp_path):
    bundle = _fresh(made, tmp_path / "linked")
    (bundle / "weights.bin").unlink()
    os.symlink(made.parent / "outside" / "weights.bin", bundle / "weights.bin")       # same bytes, same hash
    r = CliRunner().invoke(main, ["run", str(bundle), "--class", "1", "--out", str(tmp_path / "png")])
    assert_bad_input(r, "is a link to")


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(max_batch="16"), "max_batch must be a positive integer"),
    (lambda m: m.update(max_batch=0), "max_batch must be a positive integer"),
    (lambda m: m.update(engines=m["engines"][-1:]), "no scale-step engine"),
    (lambda m: m["weights"]["tensors"][sorted(m["weights"]["tensors"])[0]].update(length=3), "bytes, the table says"),
    (lambda m: m["engines"][1]["inputs"].append({"name": "ghost", "dtype": "float32", "shape": ["batch"]}),
     "reads 'ghost', which no earlier step provides"),
    (lambda m: m["engines"].reverse(), r"step must be a step in 0..\d+ \(only the last engine is the decoder\)"),
    (lambda m: m["engines"][-1].update(step=3), "must be null: the last engine is the decoder"),
])
def test_broken_manifests_are_one_line(made, tmp_path, edit, message):
    bundle = _craft(made, tmp_path, edit)
    with pytest.raises(contract.BundleError, match=message) as info:
        contract.read_manifest(bundle)
    assert "\n" not in str(info.value)


def test_overlapping_tensors_are_refused(made, tmp_path):
    def edit(m):
        a, b = sorted(m["weights"]["tensors"].values(), key=lambda t: t["offset"])[:2]
        b["offset"] = a["offset"]
    with pytest.raises(contract.BundleError, match="overlap in the weights file"):
        contract.read_manifest(_craft(made, tmp_path, edit))


def test_the_manifest_export_writes_passes_the_contract(made):
    m = contract.read_manifest(made)
    patch_nums = m.data["model"]["patch_nums"]
    assert m.conditioning == "class" and m.condition_names == (contract.LABELS,) and m.aspects == []
    assert [e.step for e in m.steps] == list(range(m.num_steps)) and m.num_steps == len(patch_nums)
    z, side = m.data["model"]["architecture"]["vae"]["z_channels"], patch_nums[-1]
    assert m.latent == ([z, side, side], "float32")
    assert all(m.noise_width(k) == p * p for k, p in enumerate(patch_nums))


def test_a_format_2_bundle_still_loads_as_class_conditional(made, tmp_path):
    """Format 3 added text bundles; a VAR bundle written before it (no `conditioning`) runs as is."""
    def edit(m):
        m["format"] = "fastervar-bundle/2"
        m["model"].pop("conditioning")
    m = contract.read_manifest(_craft(made, tmp_path, edit))
    assert m.conditioning == "class" and m.num_classes == 10 and m.aspects == []
    with pytest.raises(contract.BundleError, match="has no aspect '1:1'"):
        m.at_aspect("1:1")
    with pytest.raises(contract.BundleError, match="model.num_classes is missing"):
        contract.read_manifest(_craft(made, tmp_path / "x", lambda m: m["model"].pop("num_classes")))
