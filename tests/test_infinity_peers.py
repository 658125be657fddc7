"""The peers on Infinity as their published code runs them: FastVAR's and SkipVAR's own code,
recorded on the tiny random Infinity at the 1M schedule (`scripts/record_infinity_peers.py`), and
our `fastvar`, `skipvar-*` and `skipvar` (decision) templates on the same weights, prompts, seed
and settings: the same bits at every scale, the same uint8 image, the same decision features."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fastervar.accel.accelerated import AcceleratedModel
from fastervar.decision_rule import Decision
from fastervar.accel.presets import fastvar, paper_split, skipvar, skipvar_decision, template
from fastervar.cli import main
from fastervar.errors import FastervarError
from fastervar.models.infinity.checkpoint import random_infinity
from fastervar.models.sampler import batch_generator, generate, generate_batch
from fastervar.models.sampling import SamplingSettings
from fastervar.utils.noise import image_keys

from .test_infinity import TINY_META, reference_text

DATA = Path(__file__).parent / "data"
PEERS = json.loads((DATA / "infinity_peers.json").read_text())
REF = np.load(DATA / "infinity_peers_reference.npz")
OFFICIAL = SamplingSettings(cfg=3.0, tau=0.5, top_k=900, top_p=0.97, sampler="official")
PORTABLE = SamplingSettings(cfg=3.0, tau=0.5, top_k=900, top_p=0.97)


@pytest.fixture(scope="module")
def tiny_1m():
    return random_infinity("infinity-tiny", seed=0, pn="1M")


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(PEERS["threads"])
    yield
    torch.set_num_threads(before)


def _alone(model, profile, prompt: int, on_step=None):
    """One prompt as the peers' code runs it: a batch of one, the official sampler seeded 0."""
    acc = AcceleratedModel(model, profile)
    with torch.no_grad():
        return generate_batch(acc, reference_text().rows([prompt]), OFFICIAL, image_keys(0, [0]),
                              batch_generator(OFFICIAL, model.device, 0), on_step=on_step)


def _assert_as_recorded(g, key: str) -> None:
    ours = torch.cat([t[t >= 0] for t in g.tokens]).numpy().astype(np.uint8)
    count = int(REF[f"{key}_bits_count"])
    theirs = np.unpackbits(REF[f"{key}_bits"])[:count]
    assert len(ours) == count, f"{key}: {len(ours)} bits sampled, the peer's code sampled {count}"
    assert np.array_equal(ours, theirs), f"{key}: {(ours != theirs).sum()} of {count} bits differ"
    images = g.images.numpy()
    assert (images[:, ::16, ::16] == REF[f"{key}_image_strided"]).all()
    assert hashlib.sha256(images.tobytes()).hexdigest() == str(REF[f"{key}_image_sha256"])


@pytest.mark.slow
@pytest.mark.parametrize("prompt", PEERS["prompts"])
@pytest.mark.parametrize("name", ["fastvar", "skipvar_skip2", "skipvar_uncond2"])
def test_templates_reproduce_the_peers_code_bit_for_bit(tiny_1m, one_thread, name, prompt):
    profile = fastvar(tiny_1m) if name == "fastvar" else skipvar(tiny_1m, name.split("_")[1])
    _assert_as_recorded(_alone(tiny_1m, profile, prompt), f"{name}_p{prompt}")


@pytest.mark.slow
@pytest.mark.parametrize("prompt", PEERS["prompts"])
def test_skipvar_decision_computes_its_features_and_picks_its_move(tiny_1m, one_thread, prompt):
    seen = []
    g = _alone(tiny_1m, skipvar_decision(tiny_1m), prompt,
               on_step=lambda k, state, out: seen.append(state.decided) if state.decided and not seen else None)
    x, moves = seen[0]
    assert np.abs(x[0] - REF[f"skipvar_decision_p{prompt}_features"]).max() < 1e-6
    skip_class = int(REF[f"skipvar_decision_p{prompt}_classes"][0])
    rule = Decision.from_profile(skipvar_decision(tiny_1m).decision)
    assert rule.skip.predict(REF[f"skipvar_decision_p{prompt}_features"][None])[0] == skip_class
    assert moves == [("skip", rule.skip.first_step[skip_class])] if skip_class else moves[0][0] != "skip"
    _assert_as_recorded(g, f"skipvar_decision_p{prompt}")


@pytest.mark.slow
@pytest.mark.parametrize("make", [fastvar, skipvar_decision], ids=["fastvar", "skipvar-decision"])
def test_each_prompt_gets_the_same_image_alone_and_in_a_batch(tiny_1m, make):
    """FastVAR's code runs one prompt at a time and SkipVAR's decides for one; ours batches them,
    each image still depending only on its own prompt and noise key."""
    acc = AcceleratedModel(tiny_1m, make(tiny_1m))
    text = reference_text()
    together = generate(acc, text, PORTABLE, seed=3, batch_size=2)
    for i in range(len(text)):
        with torch.no_grad():
            alone = generate_batch(acc, text.rows([i]), PORTABLE, image_keys(3, [i]))
        for k, (a, b) in enumerate(zip(together.tokens, alone.tokens)):
            if a.shape[1] and b.shape[1]:
                assert torch.equal(a[i][a[i] >= 0], b[0][b[0] >= 0]), f"prompt {i} step {k}"
            else:
                assert not (a.shape[1] and (a[i] >= 0).any()) and not b.shape[1], f"prompt {i} step {k}"
        assert (together.images[i].int() - alone.images[0].int()).abs().max() <= 1


def test_peer_constants_apply_literally_on_infinity(tiny_1m):
    """At 1M, 1:1: widths 32 and 40 (steps 9, 10) pruned 40% and 50% in blocks 3..27 clipped to the
    tiny model's four, restored from width 24 (step 8), widths 48 and 64 skipped; SkipVAR's points
    by index; at 0.06M (widths up to 16) FastVAR changes nothing, as its code."""
    p = fastvar(tiny_1m)
    assert [s.mode for s in p.steps] == ["full"] * 9 + ["reduce"] * 2 + ["skip"] * 2
    assert [p.steps[k].kept(tiny_1m.tokens_at(k)) for k in (9, 10)] == [1024 - 409, 1600 - 800]
    assert p.steps[9].layers == [3, 4] and p.steps[9].restore_from == 8 and p.steps[9].selector == "pivotal_stream"
    assert all(s.cfg for s in p.steps)
    assert [s.mode for s in skipvar(tiny_1m, "skip3").steps][9:] == ["full", "skip", "skip", "skip"]
    assert [s.cfg for s in skipvar(tiny_1m, "uncond1").steps][11:] == [True, False]
    small = random_infinity("infinity-tiny", pn="0.06M")
    assert fastvar(small).is_identity()


def test_paper_split_on_infinity_refines_the_last_three_quarters_on_the_null_prompt(tiny_1m):
    p = paper_split(tiny_1m)
    assert p.stages["refine"] == [10, 11, 12]                  # 40, 48 and 64 hold 76% of the tokens
    assert all(s.mode == "reduce" and not s.cfg and s.unguided == "null-text" and s.prune == 0.75
               for s in p.steps[10:])
    g = generate(AcceleratedModel(tiny_1m, p), reference_text(), PORTABLE, seed=0)
    base = generate(tiny_1m, reference_text(), PORTABLE, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(g.tokens[:10], base.tokens[:10]))


def test_templates_are_named_for_the_family(tiny_1m):
    assert template("infinity-fastvar", tiny_1m).name == "infinity-tiny-fastvar"
    assert template("skipvar-uncond3", tiny_1m).steps[10].cfg is False
    assert template("d16-calibrated", tiny_1m) is None
    with pytest.raises(FastervarError, match="a template for var models"):
        template("var-fastvar", tiny_1m)
    from fastervar.models.loading import random_model
    with pytest.raises(FastervarError, match="fitted on Infinity's images"):
        skipvar_decision(random_model("tiny"))


def test_recording_meta_names_the_code_and_the_patches():
    assert PEERS["fastvar"]["repo"] == "csguoh/FastVAR" and len(PEERS["fastvar"]["commit"]) == 40
    assert PEERS["skipvar"]["repo"] == "fakerone-li/SkipVAR" and PEERS["pn"] == "1M"
    assert any("bf16" in p for p in PEERS["patches"]) and any("joblib" in p for p in PEERS["patches"])
    assert PEERS["threads"] == TINY_META["threads"]


def test_generate_takes_an_infinity_template_and_refuses_a_var_profile(tmp_path):
    emb = np.zeros((1, 4, 256), np.float32)
    emb[0, :3] = 1.0
    np.savez(tmp_path / "t.npz", embeddings=emb, lengths=np.array([3]))
    common = ["generate", "--model", "infinity-tiny", "--random-weights", "--pn", "0.06M",
              "--text-embeddings", str(tmp_path / "t.npz")]
    r = CliRunner().invoke(main, [*common, "--profile", "infinity-paper-split", "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "a" / "0000.png").exists()
    r = CliRunner().invoke(main, [*common, "--profile", "d16-paper-split", "--out", str(tmp_path / "b")])
    assert r.exit_code == 2 and "model.family is 'var', but the model is 'infinity'" in r.stderr and r.stderr.count("\n") == 1
    assert not (tmp_path / "b").exists()
