"""Batch planning: ladders, descriptors, splitting, grouping by length. Pure Python, fast."""

from __future__ import annotations

import random

import pytest

from app.cudagraph import BatchDescriptor, CUDAGraphMode
from app.engine.buckets import BatchPlanner, default_token_ladder, seq_ladder

FULL, PIECEWISE, NONE = CUDAGraphMode.FULL, CUDAGraphMode.PIECEWISE, CUDAGraphMode.NONE


def planner(mode, **kw):
    args = dict(max_seq_len=256, max_batch_size=32, max_num_tokens=8192)
    return BatchPlanner(mode, **{**args, **kw})


@pytest.mark.parametrize(
    "buckets, max_seq_len, expected",
    [
        (None, 256, [16, 32, 64, 128, 256]),
        (None, 64, [16, 32, 64]),
        (None, 100, [16, 32, 64, 100]),
        (None, 512, [16, 32, 64, 128, 256, 512]),
        # a long-context model: short texts never pad to its maximum
        (None, 8192, [16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]),
        ([128, 32], 256, [32, 128, 256]),
        ([8, 512], 256, [8, 256]),
    ],
)
def test_seq_ladder(buckets, max_seq_len, expected):
    assert seq_ladder(buckets, max_seq_len) == expected


def test_default_token_ladder():
    ladder = default_token_ladder(8192)
    assert ladder[:8] == [16, 32, 48, 64, 80, 96, 112, 128]
    assert ladder[-1] == 8192 and len(ladder) < 40
    # Padding to the next rung never wastes more than 25% above 64 tokens.
    assert all(b / a <= 1.25 for a, b in zip(ladder[3:], ladder[4:], strict=False))
    assert default_token_ladder(100)[-1] == 100


@pytest.mark.parametrize(
    "mode, batch, seq, expected",
    [
        (FULL, 1, 5, BatchDescriptor(16, 1)),
        (FULL, 3, 17, BatchDescriptor(4 * 32, 4)),
        (FULL, 32, 256, BatchDescriptor(32 * 256, 32)),
        (FULL, 9, 200, BatchDescriptor(16 * 256, 16)),
        (PIECEWISE, 3, 17, BatchDescriptor(64)),
        (PIECEWISE, 4, 100, BatchDescriptor(448)),
        (NONE, 3, 17, BatchDescriptor(51, 3)),
    ],
)
def test_descriptor_for_shape(mode, batch, seq, expected):
    assert planner(mode).descriptor_for_shape(batch, seq) == expected


def test_full_keys_keep_batch_distinct():
    # 2 x 64 and 4 x 32 (and 8 x 16) have the same token count but are different graphs.
    p = planner(FULL)
    shapes = {p.descriptor_for_shape(b, s) for b, s in [(2, 64), (4, 32), (8, 16)]}
    assert len(shapes) == 3 and {d.num_tokens for d in shapes} == {128}
    ladder = p.ladder_descriptors()
    assert len(ladder) == len(set(ladder)) == 7 * 5
    assert ladder[0] == BatchDescriptor(8192, 32) and ladder[-1] == BatchDescriptor(16, 1)
    assert [d.sort_key() for d in ladder] == sorted((d.sort_key() for d in ladder), reverse=True)


@pytest.mark.parametrize(
    "mode, batch, seq, match",
    [
        (FULL, 33, 16, "batch_size 33"),
        (FULL, 1, 257, "seq_len 257"),
        (FULL, 0, 16, "batch_size 0"),
        (PIECEWISE, 32, 257, "seq_len"),
    ],
)
def test_descriptor_for_shape_out_of_range(mode, batch, seq, match):
    with pytest.raises(ValueError, match=match):
        planner(mode).descriptor_for_shape(batch, seq)


def test_full_token_cap_limits_batch_at_long_buckets():
    p = planner(FULL, max_num_tokens=2048)
    assert p.descriptor_for_shape(8, 256) == BatchDescriptor(2048, 8)
    with pytest.raises(ValueError, match="split"):
        p.descriptor_for_shape(9, 256)
    assert BatchDescriptor(32 * 64, 32) in p.ladder_descriptors()
    assert all(d.num_tokens <= 2048 for d in p.ladder_descriptors())


def test_piecewise_and_none_ladders():
    assert planner(NONE).ladder_descriptors() == []
    pw = planner(PIECEWISE, token_buckets=[64, 512, 4096, 9999])
    assert pw.ladder_descriptors() == [BatchDescriptor(t) for t in (4096, 512, 64)]
    assert pw.max_tokens == 4096


def test_config_errors():
    with pytest.raises(ValueError, match="max_num_tokens"):
        planner(FULL, max_num_tokens=100)
    with pytest.raises(ValueError, match="token bucket"):
        planner(PIECEWISE, token_buckets=[16, 128])
    with pytest.raises(ValueError, match="seq_buckets"):
        planner(FULL, seq_buckets=[0, 16])


def covers(plan, n):
    seen = sorted(i for sb in plan for i in sb.indices)
    return seen == list(range(n))


@pytest.mark.parametrize("mode", [FULL, PIECEWISE, NONE])
def test_plan_covers_every_request_within_limits(mode):
    rng = random.Random(0)
    p = planner(mode, max_batch_size=8, max_num_tokens=1024)
    for _ in range(50):
        lengths = [rng.randint(1, 256) for _ in range(rng.randint(1, 60))]
        plan = p.plan(lengths)
        assert covers(plan, len(lengths))
        for sb in plan:
            assert len(sb.indices) <= 8 and sb.num_tokens <= 1024
            assert sb.lengths == tuple(lengths[i] for i in sb.indices)
            assert sum(sb.lengths) <= sb.num_tokens
            if mode is FULL:
                assert sb.batch >= len(sb.indices) and sb.seq_len >= max(sb.lengths)
                assert sb.descriptor == BatchDescriptor(sb.batch * sb.seq_len, sb.batch)
            elif mode is PIECEWISE:
                assert sb.descriptor == BatchDescriptor(sb.num_tokens)
            else:
                assert sb.num_tokens == sum(sb.lengths)
                assert sb.descriptor == BatchDescriptor(sum(sb.lengths), len(sb.indices))


def test_over_large_batch_is_split_not_dropped():
    p = planner(FULL)
    plan = p.plan([10] * 70)
    assert covers(plan, 70)
    assert sorted(sb.batch for sb in plan) == [8, 32, 32]
    pw = planner(PIECEWISE)
    plan = pw.plan([256] * 40)  # 10240 tokens > 8192
    assert covers(plan, 40) and [len(sb.indices) for sb in plan] == [32, 8]


def test_full_groups_by_length_to_avoid_padding():
    p = planner(FULL)
    # 31 short requests and one at the limit: padding all to 256 would cost 32 x 256 tokens.
    plan = p.plan([12] * 31 + [256])
    shapes = sorted((sb.batch, sb.seq_len) for sb in plan)
    assert shapes == [(1, 256), (32, 16)]
    # Neighbouring buckets with few requests merge: one forward is cheaper than two.
    plan = p.plan([14, 20])
    assert [(sb.batch, sb.seq_len) for sb in plan] == [(2, 32)]
    # With no per-forward overhead, nothing is ever padded past its own bucket.
    free = planner(FULL, split_overhead_tokens=0)
    plan = free.plan([14, 20, 60, 100])
    assert sorted(sb.seq_len for sb in plan) == [16, 32, 64, 128]


def test_packed_plan_sorts_longest_first():
    plan = planner(PIECEWISE).plan([3, 50, 7, 50, 20])
    assert len(plan) == 1
    assert plan[0].lengths == (50, 50, 20, 7, 3)
    assert plan[0].indices == (1, 3, 4, 2, 0)
    assert plan[0].descriptor == BatchDescriptor(160)


def test_plan_rejects_bad_lengths():
    with pytest.raises(ValueError):
        planner(NONE).plan([0])
    with pytest.raises(ValueError):
        planner(FULL).plan([257])
    assert planner(FULL).plan([]) == []
