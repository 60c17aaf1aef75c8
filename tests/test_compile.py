"""`--compile`, channels_last: rollouts sampled by a compiled policy re-score with ratios of exactly 1.

The inductor (the production backend) builds C++ kernels, about 40 s for the smallest UNet on this project's
2-core CPU, so one test compiles with it, at the sampler level; the trainer-level tests use `aot_eager`, which
traces the same graphs through dynamo and AOTAutograd (so sampling and training share one joint graph, as with
the inductor) but runs them with eager kernels.
"""

from __future__ import annotations

import copy
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import safetensors.torch
import torch
from diffusers import DDPMScheduler, UNet2DModel
from torch._dynamo.utils import counters

from ddpo_hub.training import performance
from ddpo_hub.training.config import resolve_config
from ddpo_hub.training.run_folder import read_metrics
from ddpo_hub.training.sampling import StochasticSampler
from ddpo_hub.training.trainer import Trainer
from ddpo_hub.training.workflow import trainer_class
from tests.helpers import FAST, FAST_NFT, make_tiny_pipeline

# 8 samples in minibatches of 4, both accumulated into the epoch's one optimizer step: every step is re-scored
# under the weights that sampled it, so the logged approx_kl and clipfrac are exactly 0 when re-scoring is exact.
ONE_UPDATE = dict(gradient_accumulation_steps=2)
CPU = torch.device("cpu")


def _graphs() -> int:
    """Graphs dynamo compiled since the last `_fresh_dynamo()`."""
    return counters["stats"]["unique_graphs"]


def _fresh_dynamo() -> None:
    torch._dynamo.reset()
    counters.clear()


@pytest.fixture
def aot_eager(monkeypatch):
    monkeypatch.setattr(performance, "BACKEND", "aot_eager")
    _fresh_dynamo()
    yield
    _fresh_dynamo()


def _trainer(base: str, run_dir: Path, fast: dict, **overrides) -> Trainer:
    config = resolve_config(overrides={"base_model": base, "output_dir": str(run_dir), **fast, **overrides})
    return trainer_class(config.algorithm)(config)


def _micro_unet(**changes) -> UNet2DModel:
    """The smallest UNet2DModel worth compiling: one level, no attention, 8x8."""
    torch.manual_seed(0)
    settings = dict(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(8,),
        down_block_types=("DownBlock2D",),
        up_block_types=("UpBlock2D",),
        norm_num_groups=4,
        add_attention=False,
    )
    return UNet2DModel(**(settings | changes))


def _noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.slow
def test_inductor_compiled_rollouts_match_eager_and_rescore_with_ratio_exactly_one():
    """The production backend: rollout through the training graph, then re-score as the trainer does."""
    _fresh_dynamo()
    unet = _micro_unet()
    eager = copy.deepcopy(unet).eval()
    sampler = StochasticSampler(dict(DDPMScheduler(num_train_timesteps=1000).config), kind="ddim", num_steps=4)
    assert sampler.trainable[:3].all() and not sampler.trainable[3]
    assert performance.compile_policy(unet, CPU)
    noise = _noise((4, 3, 8, 8), 0)
    policy = performance.TrainingGraph(unet.train())
    rollout = sampler.rollout(policy, noise, generator=torch.Generator().manual_seed(1), forward_batch_size=2)
    reference = sampler.rollout(eager, noise, generator=torch.Generator().manual_seed(1), forward_batch_size=2)
    # The inductor fuses and vectorises its own kernels: the same rollouts up to float rounding, not bit for bit.
    torch.testing.assert_close(rollout.latents, reference.latents, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(rollout.log_probs, reference.log_probs, rtol=1e-4, atol=1e-5)

    step_index = torch.tensor([2, 0, 1, 2])  # per-sample timesteps, re-scored in the sampler's chunks
    with torch.compiler.set_stance("fail_on_recompile"):
        for rows in (torch.arange(2, 4), torch.arange(0, 2)):
            log_prob = sampler.score_step(
                unet,
                rollout.latents[rows, step_index[rows]],
                step_index[rows],
                rollout.latents[rows, step_index[rows] + 1],
            )
            ratio = torch.exp(log_prob.detach() - rollout.log_probs[rows, step_index[rows]])
            assert torch.equal(ratio, torch.ones_like(ratio))
            log_prob.mean().backward()  # the graph's backward half runs too
    assert all(parameter.grad is not None for parameter in unet.parameters())
    assert _graphs() == 1, "sampling and re-scoring shared one graph"


def test_compiled_training_samples_eager_rollouts_and_rescores_them_exactly(tiny_pipeline_dir, tmp_path, aot_eager):
    fast = FAST | ONE_UPDATE
    trainers, first_epochs = {}, {}
    for compiled in (False, True):
        trainer = trainers[compiled] = _trainer(
            tiny_pipeline_dir, tmp_path / f"compile-{compiled}", fast, compile=compiled
        )
        assert trainer.compiled is compiled
        with ThreadPoolExecutor(max_workers=1) as pool:
            first_epochs[compiled] = trainer.sample_epoch(1, pool).samples
        trainer.train()
    # aot_eager runs the traced forward with eager kernels: the same rollouts bit for bit.
    assert torch.equal(first_epochs[True].latents, first_epochs[False].latents)
    assert torch.equal(first_epochs[True].log_probs, first_epochs[False].log_probs)
    eager, compiled = trainers[False], trainers[True]
    for trainer in (eager, compiled):
        for row in read_metrics(trainer.run_dir):
            assert (row["approx_kl"], row["clipfrac"]) == (0.0, 0.0), "every ratio exactly 1"
    assert _graphs() == 1, "one graph for 2 epochs of sampling and training; the fixed-seed set runs eager"


def test_compiled_nft_trains_with_one_graph_per_model(tiny_pipeline_dir, tmp_path, aot_eager):
    runs = {}
    for compiled in (False, True):
        trainer = _trainer(tiny_pipeline_dir, tmp_path / f"nft-{compiled}", FAST_NFT, epochs=1, compile=compiled)
        runs[compiled] = read_metrics(trainer.train())[0]
    assert _graphs() == 2, "the trained UNet's training graph and the old policy's"
    # The old policy samples epoch 1 from the base weights, through the same forward as eager: the same rewards.
    assert runs[True]["reward_mean"] == runs[False]["reward_mean"]
    assert runs[True]["loss"] == pytest.approx(runs[False]["loss"], rel=1e-5)


def test_compile_is_a_logged_no_op_where_torch_compile_cannot_run(tiny_pipeline_dir, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(performance, "compile_unsupported", lambda device: "no C++ compiler (simulated)")
    _fresh_dynamo()
    with caplog.at_level(logging.WARNING, logger=performance.__name__):
        trainer = _trainer(tiny_pipeline_dir, tmp_path / "run", FAST | ONE_UPDATE, epochs=1, compile=True)
    assert "--compile is a no-op here: no C++ compiler (simulated). The run continues uncompiled" in caplog.text
    assert not trainer.compiled
    assert read_metrics(trainer.train())[0]["approx_kl"] == 0.0
    assert _graphs() == 0


def test_support_check_names_a_missing_cpp_compiler(monkeypatch):
    import torch._inductor.config

    with torch._inductor.config.patch({"cpp.cxx": ("no-such-c++",)}):
        assert "no C++ compiler" in performance.compile_unsupported(CPU)
        monkeypatch.setattr(performance, "BACKEND", "aot_eager")  # builds no kernels: needs no compiler
        assert performance.compile_unsupported(CPU) is None


def test_compile_refuses_a_policy_with_active_dropout():
    with pytest.raises(ValueError, match="active dropout"):
        performance.compile_policy(_micro_unet(dropout=0.1), CPU)


@pytest.mark.parametrize("compiled", [False, True])
def test_channels_last_keeps_outputs_saved_weights_and_ratios_as_before(tmp_path, aot_eager, compiled):
    """Applied on CUDA by the trainer; the layout logic is the same on the CPU, and its hooks compile into the graph."""
    plain = make_tiny_pipeline().unet.eval()
    unet = copy.deepcopy(plain)
    performance.use_channels_last(unet)
    conv = unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    sampler = StochasticSampler(dict(DDPMScheduler(num_train_timesteps=1000).config), kind="ddim", num_steps=6)
    sample, step_index = _noise((4, 3, 16, 16), 0), torch.tensor([0, 3, 4, 1])
    with torch.no_grad():
        mean, expected = sampler.predict_mean(unet, sample, step_index), sampler.predict_mean(plain, sample, step_index)
    assert mean.is_contiguous(), "the step arithmetic and its pixel means see NCHW as before"
    torch.testing.assert_close(mean, expected, rtol=1e-5, atol=1e-5)
    state = unet.state_dict()
    assert all(tensor.is_contiguous() for tensor in state.values())
    assert all(torch.equal(state[name], tensor) for name, tensor in plain.state_dict().items())
    safetensors.torch.save_file(state, tmp_path / "unet.safetensors")  # refuses non-contiguous tensors

    policy = unet
    if compiled:
        assert performance.compile_policy(unet, CPU)
        policy = performance.TrainingGraph(unet.train())
    rollout = sampler.rollout(policy, _noise((4, 3, 16, 16), 1), torch.Generator().manual_seed(2), forward_batch_size=2)
    unet.train()
    for rows in (torch.arange(0, 2), torch.arange(2, 4)):
        log_prob = sampler.score_step(
            unet, rollout.latents[rows, step_index[rows]], step_index[rows], rollout.latents[rows, step_index[rows] + 1]
        )
        ratio = torch.exp(log_prob.detach() - rollout.log_probs[rows, step_index[rows]])
        assert torch.equal(ratio, torch.ones_like(ratio))
    assert _graphs() == (1 if compiled else 0)
