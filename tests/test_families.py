"""One suite over every family: what the step protocol promises, checked the same way on VAR and on
Infinity. The identity profile reproduces the baseline token for token; KV-cached steps equal one
teacher-forced pass; every selector and restoration level runs, keeps the early steps intact and
reduces to the full step when it keeps every token; dropping guidance keeps the half it names;
factorized linears and skipped steps behave as planned."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastervar import profile as P
from fastervar.accel.accelerated import AcceleratedModel
from fastervar.models.infinity.checkpoint import random_infinity
from fastervar.models.infinity.family import DEFAULT_SETTINGS
from fastervar.models.loading import random_model
from fastervar.models.sampler import generate
from fastervar.models.sampling import SamplingSettings
from fastervar.models.text.prompts import TextBatch

FAMILIES = ["tiny", "tiny-saln", "tiny-d16-schedule", "infinity-tiny"]


def _model(name: str):
    return random_infinity(name, seed=1, pn="0.06M") if name.startswith("infinity") else random_model(name, seed=1)


def _inputs(model):
    """Two prompts of the family's kind: class labels, or text of two lengths."""
    if model.family == "var":
        return [1, 8]
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((2, 7, model.infinity.cfg.text_channels), dtype=np.float32)
    emb[0, 4:] = 0
    return TextBatch(torch.from_numpy(emb), torch.tensor([4, 7]))


def _condition_inputs(model, inputs):
    return inputs if model.family == "infinity" else torch.tensor(inputs)


def _settings(model) -> SamplingSettings:
    return SamplingSettings(cfg=2.0) if model.family == "var" else DEFAULT_SETTINGS


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    model = _model(request.param)
    inputs = _inputs(model)
    return model, inputs, generate(model, inputs, _settings(model), seed=0)


def _late(model, **last) -> P.Profile:
    """Identity but for the last two steps, reduced without guidance, restored from the one before."""
    s = model.num_steps
    p = P.identity(model, "test")
    p.stages = {"semantic": list(range(s - 2)), "refine": [s - 2, s - 1]}
    plan = {"mode": "reduce", "cfg": False, "prune": 0.6, "selector": "pivotal", "restore_from": s - 3, **last}
    p.steps[s - 2] = P.StepPlan(**plan)
    p.steps[s - 1] = P.StepPlan(**plan)
    return p


def test_identity_profile_reproduces_the_baseline(family):
    model, inputs, base = family
    g = generate(AcceleratedModel(model, P.identity(model)), inputs, _settings(model), seed=0)
    assert all(torch.equal(a, b) for a, b in zip(g.tokens, base.tokens))
    assert torch.equal(g.images, base.images)


@torch.no_grad()
def test_kv_cached_steps_equal_one_teacher_forced_pass(family):
    model, inputs, base = family
    cond = model.condition(_condition_inputs(model, inputs), guided=True)
    state = model.init_state(2)
    cached = []
    for k in range(model.num_steps):
        x = model.step_input(k, state.f_hat, cond)
        hidden, state.caches = model.blocks_forward(k, x, model.block_context(k, cond), state.caches)
        cached.append(model.logits(hidden, cond))
        state.f_hat = model.update_f_hat(k, state.f_hat, _codes(model, k, base.tokens[k]))
    if model.family == "var":
        guided = torch.cat((torch.tensor(inputs), torch.full((2,), model.var.num_classes)))
        teacher = model.var(guided, model.teacher_inputs(base.tokens).repeat(2, 1, 1))
    else:
        teacher = model.teacher_forced_logits(cond, base.tokens)
    assert (teacher - torch.cat(cached, dim=1)).abs().max() < 1e-4


def _codes(model, k: int, tokens: torch.Tensor) -> torch.Tensor:
    """What the latent update adds for sampled tokens: VAR's code vectors, or Infinity's bits."""
    if model.family == "var":
        return model.vae.quantize.embedding(tokens)
    return tokens.view(tokens.shape[0], model.tokens_at(k), -1)


@pytest.mark.parametrize(("selector", "level"), [(s, lv) for s in P.SELECTORS for lv in P.RESTORE_LEVELS
                                                  if (s != "pivotal_stream" or lv == "layer") and s != "relevance"])
def test_every_selector_and_level_runs_and_keeps_the_early_steps(family, selector, level):
    model, inputs, base = family
    p = _late(model, selector=selector, restore_level=level, **({"upsample": "area"} if level == "layer" else {}))
    g = generate(AcceleratedModel(model, p), inputs, _settings(model), seed=0)
    s = model.num_steps
    assert all(torch.equal(a, b) for a, b in zip(g.tokens[:s - 2], base.tokens[:s - 2]))
    for k in (s - 2, s - 1):
        assert g.tokens[k].shape == base.tokens[k].shape
        if level == "latent":           # only the kept positions are sampled this step
            kept = p.steps[k].kept(model.tokens_at(k))
            assert (g.tokens[k] >= 0).sum().item() == 2 * kept * (g.tokens[k].shape[1] // model.tokens_at(k))


@pytest.mark.parametrize("level", ["block", "layer"])
def test_keeping_every_token_is_the_full_step(family, level):
    model, inputs, base = family
    p = _late(model, selector="grid", restore_level=level, prune=0.0)
    for plan in p.steps[-2:]:
        plan.cfg = True
    g = generate(AcceleratedModel(model, p), inputs, _settings(model), seed=0)
    assert all(torch.equal(a, b) for a, b in zip(g.tokens, base.tokens))


@pytest.mark.parametrize("unguided", P.UNGUIDED)
@torch.no_grad()
def test_dropping_guidance_runs_the_half_it_names(family, unguided):
    model, inputs, base = family
    s = model.num_steps
    p = P.identity(model)
    p.steps[s - 1] = P.StepPlan(mode="full", cfg=False, unguided=unguided)
    seen = {}

    def watch(acc):
        def hook(k, state, out):
            seen.setdefault(acc, {})[k] = (out.logits, state.caches[0][0].shape[0])
        return hook

    from fastervar.models.sampler import generate_batch
    from fastervar.utils.noise import image_keys
    batch = inputs.rows([0, 1]) if model.family == "infinity" else torch.tensor(inputs)
    generate_batch(model, batch, _settings(model), image_keys(0, [0, 1]), on_step=watch("base"))
    generate_batch(AcceleratedModel(model, p), batch, _settings(model), image_keys(0, [0, 1]), on_step=watch("acc"))
    guided_logits, rows = seen["base"][s - 1]
    logits, cache_rows = seen["acc"][s - 1]
    assert rows == 4 and cache_rows == 2 and logits.shape[0] == 2
    half = guided_logits[2:] if unguided == "null-text" else guided_logits[:2]
    assert (logits - half).abs().max() < 1e-4


def test_factorized_linears_and_skipped_steps(family):
    model, inputs, base = family
    spec = model.spec()
    p = P.identity(model)
    s = model.num_steps
    name = next(n for n in spec.linears if n.endswith("fc1"))
    p.steps[s - 2] = P.StepPlan(mode="full", ranks={name: 4})
    p.steps[s - 1] = P.StepPlan(mode="skip")
    g = generate(AcceleratedModel(model, p), inputs, _settings(model), seed=0)
    assert all(torch.equal(a, b) for a, b in zip(g.tokens[:s - 2], base.tokens[:s - 2]))
    assert not torch.equal(g.tokens[s - 2], base.tokens[s - 2])       # rank 4 changes the step
    assert g.tokens[s - 1].shape == (2, 0)
    for i in range(model.depth):                                       # and leaves no factors behind
        assert all(not owner.factors for owner, _ in model.factor_slots(i).values())
