"""A simulated step replayed at another batch size or sequence length (lab.estimate.replay) against the same step
simulated there, and the inverse question read off the replay."""

from __future__ import annotations

from dataclasses import replace

import pytest

from lab.estimate.gpus import Gpu
from lab.estimate.inverse import SAMPLES, _basis, max_fitting
from lab.estimate.replay import replay_peak
from lab.estimate.simulate import simulate
from lab.estimate.training import TrainingSettings
from lab.models.architecture import architecture_from_config, config_from_dict

SHAPE = dict(model_type="llama", pad_token_id=0, bos_token_id=1, eos_token_id=2, vocab_size=256, hidden_size=128,
             intermediate_size=512, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=65_536)
ARCH = architecture_from_config(config_from_dict(SHAPE, "tiny llama"), "tiny llama")
LORA = TrainingSettings(method="lora", precision="bf16", max_length=512, gradient_checkpointing=True)


@pytest.mark.parametrize(("knob", "samples", "within", "beyond"), [
    ("batch_size", (2, 4), 6, 12),  # x 512 tokens: within TRL's 4,096-token tile, and beyond it
    ("max_length", (256, 1024), 3000, 6000),
])
@pytest.mark.slow
def test_a_replayed_step_is_the_simulated_one_while_its_sizes_keep_growing(knob, samples, within, beyond):
    simulate(ARCH, LORA)  # the fake model's first step (it makes a few one-time copies the later ones do not)
    basis = [(x, simulate(ARCH, replace(LORA, **{knob: x})).trace) for x in samples]
    assert basis[0][1].shape == basis[1][1].shape  # the same stream, allocation for allocation: sizes differ
    for x in (within, beyond):
        there = simulate(ARCH, replace(LORA, **{knob: x}))
        assert there.trace.shape == basis[0][1].shape
        replayed = replay_peak(basis, x)
        # past 4,096 tokens the head's buffer stops growing and this tiny model peaks there: the replay overshoots,
        # which is why the inverse search simulates what it predicts
        assert replayed == there.peak_bytes if x == within else replayed > there.peak_bytes, (knob, x)


@pytest.mark.slow
def test_streams_that_differ_are_not_replayed_into_each_other():
    """bitsandbytes' 4-bit matmul is one fused kernel up to 1,536 rows and a dequantize + matmul beyond it: a batch
    of 1 x 1,024 tokens and one of 2 x 1,024 allocate different things, and the inverse search does not replay one
    from the other."""
    qlora = TrainingSettings(method="qlora", precision="nf4", max_length=1024, gradient_checkpointing=True)
    runs = {b: simulate(ARCH, replace(qlora, batch_size=b)) for b in (1, 2, 3)}
    assert runs[1].trace.shape != runs[2].trace.shape == runs[3].trace.shape
    assert [x for x, _ in _basis(runs, 3, 65_537, 1)] == [3, 2]
    assert _basis({b: runs[b] for b in (1, 2)}, 2, 65_537, 1) is None


@pytest.mark.slow
def test_the_inverse_search_simulates_what_the_replay_predicts():
    """The samples replay the step at every length; the search simulates the largest length the replay says fits:
    an answer exact to the token. This tiny model peaks in the head, where TRL's 4,096-token tile stops growing:
    the first replay overshoots, and the next, drawn through the check, does not. The check that lands on the
    replay's peak to the byte is the last: one token more is replayed over the budget, not simulated, and a
    simulation of it here agrees. (The line search alone took 7 simulations here and answered 19,999, within its
    2%; simulating both ends took one more than now.)"""
    card = Gpu("RAM that holds 20,000 tokens", simulate(ARCH, replace(LORA, max_length=20_000)).peak_bytes, cuda=False)
    answer = max_fitting(ARCH, LORA, card, "max_length")
    assert answer.settled and answer.checked and (answer.value, answer.above) == (20_000, 20_001)
    simulated = dict(answer.points)
    assert simulated[20_000] <= card.memory_bytes  # the answer itself is simulated
    assert answer.above_replayed and 20_001 not in simulated
    assert simulate(ARCH, replace(LORA, max_length=20_001)).peak_bytes > card.memory_bytes  # the replay was right
    assert len(answer.points) <= len(SAMPLES["max_length"]) + 2


@pytest.mark.slow
def test_a_paged_state_replays_on_either_side_of_the_paging_threshold():
    """paged_adamw_8bit pages a state only from 1e5 elements on, the same allocation either way: ranks on either
    side of that size have one stream, and the replay files each state as paged or not by its replayed size. Here
    (512 wide, gate/up 1,024 out) no state is paged at ranks 16 and 64, gate/up's B at 128, every A and B at 300;
    ranks 16 and 64 replay the simulated peak at 128 and 300 to the byte, and the inverse search for the rank on a
    card that holds 300 simulates the answer alone besides its samples, 16 and the widest rank (where the widest
    rank's stream stood apart, the first check needed a second beside it)."""
    shape = {**SHAPE, "hidden_size": 512, "intermediate_size": 1024, "num_key_value_heads": 4}
    arch = architecture_from_config(config_from_dict(shape, "paged llama"), "paged llama")
    qlora = TrainingSettings(method="qlora", precision="nf4", optimizer="paged_adamw_8bit", max_length=256,
                             gradient_checkpointing=True, targets="all-linear")
    runs = {r: simulate(arch, replace(qlora, r=r)) for r in (16, 64, 128, 300)}
    assert len({run.trace.shape for run in runs.values()}) == 1
    paged = {r: run.excluded.get("paged", 0) for r, run in runs.items()}
    assert paged[16] == paged[64] == 0 < paged[128] < paged[300]
    basis = [(16, runs[16].trace), (64, runs[64].trace)]
    for r in (128, 300):
        assert replay_peak(basis, r) == runs[r].peak_bytes, r
    card = Gpu("RAM that holds rank 300", runs[300].peak_bytes, cuda=False)
    answer = max_fitting(arch, qlora, card, "r")
    assert (answer.value, answer.above, answer.settled) == (300, 301, True)
    assert answer.above_replayed and sorted(x for x, _ in answer.points) == [16, 300, answer.upper]
