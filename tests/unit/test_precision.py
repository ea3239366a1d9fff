"""bf16 autocast (train.bf16) against fp32 on the tiny model: the precision it costs is small
and measured (`python -m bench precision` prints the same figures, for the 135M model too)."""

from bench.precision import compare


def test_bf16_autocast_stays_close_to_fp32():
    f = compare("tiny", steps=5, batch_size=4, seq_len=32)
    assert f["loss_rel_diff"] < 1e-3  # measured: 1.6e-5
    assert f["grad_cosine"] > 0.999  # measured: 1.0000 (tiny), 0.9998 (135M)
    assert f["grad_norm_rel_diff"] < 1e-2
    assert f["curve_max_abs_gap"] < 1e-2
    assert f["weights_gap_over_movement"] < 0.1  # the two runs drift apart by 2% of a step
