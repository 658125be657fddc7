"""The GPU fast path: CUDA-graph replay must sample exactly what the eager step loop samples, for
the baseline and for accelerated profiles (reduced, unguided and skipped steps), batch after batch."""

from __future__ import annotations

import pytest
import torch

from fastervar.accel.accelerated import AcceleratedModel
from fastervar.accel.presets import paper_split, skipvar
from fastervar.models.cuda_graphs import GraphedModel, _Captured, _tensors, fast_path
from fastervar.models.loading import random_model
from fastervar.models.sampler import generate
from fastervar.models.sampling import SamplingSettings

PORTABLE = SamplingSettings(cfg=2.0, top_k=30, top_p=0.95)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU (none here)")


def test_fast_path_is_the_model_itself_off_the_gpu():
    model = random_model("tiny")
    assert fast_path(model, PORTABLE) is model
    assert fast_path(model, SamplingSettings(sampler="official")) is model


@needs_cuda
@pytest.mark.parametrize("which", ["baseline", "paper-split", "skipvar-uncond3"])
def test_graph_replay_samples_the_eager_tokens(which):
    model = random_model("tiny-d16-schedule").cuda()
    runner = {"baseline": model, "paper-split": AcceleratedModel(model, paper_split(model.cfg)),
              "skipvar-uncond3": AcceleratedModel(model, skipvar(model.cfg, "uncond3"))}[which]
    graphed = fast_path(runner, PORTABLE)
    assert isinstance(graphed, GraphedModel)
    for seed, classes in ((0, [1, 4, 7]), (5, [2, 2, 9]), (9, [3])):     # capture, replay, another batch size
        want = generate(runner, classes, PORTABLE, seed=seed, batch_size=len(classes))
        got = generate(graphed, classes, PORTABLE, seed=seed, batch_size=len(classes))
        for k, (a, b) in enumerate(zip(want.tokens, got.tokens)):
            assert torch.equal(a, b), f"{which}, seed {seed}: step {k} tokens differ"
        assert (want.images.int() - got.images.int()).abs().max() <= 1


class _Rerun:
    """Stands in for a captured graph on the CPU: replaying reruns the step and writes its results
    into the tensors the capture returned, as a real replay writes into the graph's buffers."""

    def __init__(self, fn, captured):
        self.fn, self.captured = fn, captured

    def replay(self) -> None:
        for dst, src in zip(_tensors(self.captured), _tensors(self.fn())):
            dst.copy_(src)


class EmulatedGraphs(GraphedModel):
    """GraphedModel's bookkeeping (input buffers, fed state, outputs read back) without CUDA."""

    @staticmethod
    def _new_pool():
        return None

    @staticmethod
    def _capture(plan, inputs, fn):
        state, output = fn()
        return _Captured(_Rerun(fn, (state, output)), inputs, state, output)


@pytest.mark.parametrize("which", ["baseline", "paper-split", "skipvar-uncond3"])
def test_replay_bookkeeping_feeds_every_step_its_own_inputs(which):
    """On the CPU, with capture emulated: every later batch must read its own noise and condition
    through the captured buffers, and each step the state the step before it wrote."""
    model = random_model("tiny-d16-schedule")
    runner = {"baseline": model, "paper-split": AcceleratedModel(model, paper_split(model.cfg)),
              "skipvar-uncond3": AcceleratedModel(model, skipvar(model.cfg, "uncond3"))}[which]
    graphed = EmulatedGraphs(runner)
    for seed, classes in ((0, [1, 4, 7]), (5, [2, 2, 9]), (9, [3]), (11, [8, 0, 5])):
        want = generate(runner, classes, PORTABLE, seed=seed, batch_size=len(classes))
        got = generate(graphed, classes, PORTABLE, seed=seed, batch_size=len(classes))
        for k, (a, b) in enumerate(zip(want.tokens, got.tokens)):
            assert torch.equal(a, b), f"{which}, seed {seed}: step {k} tokens differ"
        assert torch.equal(want.images, got.images)
    assert sorted(graphed._plans) == [1, 3]


def test_captured_batch_sizes_are_bounded_least_recently_used_first():
    """A server meets many batch sizes: past the bound, the size used longest ago is dropped and
    recaptured if it returns, and the images stay the eager ones."""
    model = random_model("tiny")
    graphed = EmulatedGraphs(model, max_batches=2)
    for size in (1, 2, 1, 3):
        classes = list(range(size))
        want = generate(model, classes, PORTABLE, seed=size, batch_size=size)
        got = generate(graphed, classes, PORTABLE, seed=size, batch_size=size)
        assert torch.equal(want.images, got.images)
    assert graphed.captured_batches == [1, 3]                # 2 was the least recently used
    with pytest.raises(ValueError, match="max_batches"):
        GraphedModel(model, max_batches=0)


def test_graphs_convert_pixels_as_the_family_does():
    """uint8 conversion comes from the wrapped model: VAR rounds, a truncating family truncates."""
    model = random_model("tiny")

    class Truncating:
        device, dtype = model.device, model.dtype

        @staticmethod
        def to_uint8(images):
            return images.permute(0, 2, 3, 1).mul(255).to(torch.uint8)

    images = torch.full((1, 3, 2, 2), 0.999)
    assert EmulatedGraphs(model).to_uint8(images).max() == 255
    assert EmulatedGraphs(Truncating()).to_uint8(images).max() == 254
    plain = Truncating()
    assert fast_path(plain, PORTABLE) is plain           # the device comes from the protocol, not `.var`


# -- Infinity: a condition of prepared prompts, whose shapes follow the batch's longest prompt --------
def _infinity_runners():
    from fastervar.models.infinity.checkpoint import random_infinity
    from fastervar.profile import identity
    model = random_infinity("infinity-tiny", pn="0.06M")
    late = identity(model, "late-halves")
    for k, half in ((5, "null-text"), (6, "null-text")):
        late.steps[k].cfg, late.steps[k].unguided = False, half
    cond_only = identity(model, "cond-only")
    cond_only.steps[6].cfg = False
    return model, {"baseline": model, "paper-split": AcceleratedModel(model, paper_split(model)),
                   "null-text": AcceleratedModel(model, late), "cond-only": AcceleratedModel(model, cond_only)}


def _prompts(lengths, seed):
    from fastervar.models.text.prompts import TextBatch
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(len(lengths), max(lengths), 256, generator=g)
    lengths = torch.tensor(lengths)
    return TextBatch(emb * (torch.arange(emb.shape[1])[None, :, None] < lengths[:, None, None]), lengths)


@pytest.mark.parametrize("which", ["baseline", "paper-split", "null-text", "cond-only"])
def test_infinity_replay_feeds_each_batch_its_prompts_and_recaptures_for_new_lengths(which):
    model, runners = _infinity_runners()
    runner = runners[which]
    settings = model.default_settings()
    graphed = EmulatedGraphs(runner)
    for seed, lengths in ((0, [3, 5]), (1, [5, 2]), (2, [4, 4, 1]), (3, [2, 7])):   # replay; new size; new length
        text = _prompts(lengths, seed)
        want = generate(runner, text, settings, seed=seed, batch_size=len(lengths))
        got = generate(graphed, text, settings, seed=seed, batch_size=len(lengths))
        for k, (a, b) in enumerate(zip(want.tokens, got.tokens)):
            assert torch.equal(a, b), f"{which}, seed {seed}: step {k} bits differ"
        assert torch.equal(want.images, got.images)        # Infinity's truncation, through the graphs
    assert sorted(graphed.captured_batches) == [2, 3]


@needs_cuda
def test_infinity_graph_replay_samples_the_eager_bits():
    model, runners = _infinity_runners()
    model.cuda()
    settings = model.default_settings()
    for which, runner in runners.items():
        graphed = fast_path(runner, settings)
        assert isinstance(graphed, GraphedModel)
        for seed, lengths in ((0, [3, 5]), (1, [5, 2]), (2, [4])):
            text = _prompts(lengths, seed)
            want = generate(runner, text, settings, seed=seed, batch_size=len(lengths))
            got = generate(graphed, text, settings, seed=seed, batch_size=len(lengths))
            for k, (a, b) in enumerate(zip(want.tokens, got.tokens)):
                assert torch.equal(a, b), f"{which}, seed {seed}: step {k} bits differ"
