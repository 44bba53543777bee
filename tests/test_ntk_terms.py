"""Merged blocks (:func:`conetool.ntk_terms.merged`): the dense terms of a block side by side as
one matrix give the same kernel entries as the terms one by one."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conetool import blas_syrk, ntk_schedule, ntk_terms, ntk_tuning
from conetool.ntk_terms import Dense, FactoredGrad, Term


def _block(examples: int, seed: int, full: bool = False) -> list[Term]:
    gen = torch.Generator().manual_seed(seed)
    k = 3
    per = k if full else 1

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    return [
        Dense(rand(examples * per, 5)),
        FactoredGrad(rand(examples, 4, 6), rand(examples, k, 4, 2), full),
        Dense(rand(examples * per, 7)),
        Dense(rand(examples * per, 1)),
    ]


def test_merged_lays_dense_terms_side_by_side_and_keeps_factored_terms() -> None:
    block = _block(5, seed=0)
    out = ntk_terms.merged(block)
    assert [type(t) for t in out] == [Dense, FactoredGrad]
    mats = [t.mat for t in block if isinstance(t, Dense)]
    assert torch.equal(out[0].mat, torch.cat(mats, dim=1))
    assert out[1] is block[1]
    only = [block[1], block[2]]  # one dense term: no copy, dense first
    assert [id(t) for t in ntk_terms.merged(only)] == [id(block[2]), id(block[1])]


def test_merged_blocks_give_the_same_entries() -> None:
    for full in (False, True):
        left, right = _block(5, seed=1, full=full), _block(4, seed=2, full=full)
        expected = ntk_terms.contract(left, right)
        got = ntk_terms.contract(ntk_terms.merged(left), ntk_terms.merged(right))
        assert torch.allclose(got, expected, rtol=1e-12, atol=1e-12)
        gram = ntk_terms.gram(ntk_terms.merged(left))
        assert torch.allclose(gram, ntk_terms.contract(left, left), rtol=1e-12, atol=1e-12)


def test_a_panel_written_call_by_call_is_the_merged_block() -> None:
    for full in (False, True):
        per = 3 if full else 1
        first, second = _block(2, seed=3, full=full), _block(3, seed=4, full=full)
        panel = ntk_terms.empty_like(first, 5, per)
        ntk_terms.write(panel, first, 0, per)
        ntk_terms.write(panel, second, 2, per)
        whole = ntk_terms.merged(
            [
                Dense(torch.cat([a.mat, b.mat]))
                if isinstance(a, Dense) and isinstance(b, Dense)
                else FactoredGrad(torch.cat([a.a, b.a]), torch.cat([a.g, b.g]), full)
                for a, b in zip(first, second, strict=True)
            ]
        )
        assert len(panel) == len(whole) == 2
        assert torch.equal(panel[0].mat, whole[0].mat)
        assert torch.equal(panel[1].a, whole[1].a) and torch.equal(panel[1].g, whole[1].g)


def test_spare_memory_is_reused_until_a_larger_piece_needs_more() -> None:
    spare = ntk_terms.Spare()
    like = torch.zeros(1)
    first = spare.take(like, 4, 6)
    assert first.shape == (4, 6)
    smaller = spare.take(like, 3, 5)  # fits: the same memory
    assert smaller.shape == (3, 5) and smaller.data_ptr() == first.data_ptr()
    larger = spare.take(like, 5, 6)  # does not fit: new memory, kept from now on
    assert larger.shape == (5, 6) and spare.take(like, 2, 2).data_ptr() == larger.data_ptr()
    other = spare.take(torch.zeros(1, dtype=torch.float64), 2, 2)
    assert other.dtype == torch.float64


def test_logit_groups_run_largest_first() -> None:
    from conetool import ntk_schedule

    groups = ntk_schedule._groups("trace", 10, 3, torch.eye(10))
    assert [len(g) for g in groups] == [3, 3, 2, 2]
    assert torch.equal(torch.cat(groups).sum(0), torch.ones(10))  # every logit once


def test_wide_dense_rows_take_the_triangle_of_sub_blocks_on_a_gpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # On a GPU a wide dense term's Gram matrix is computed in sub-blocks of wide_rows rows,
    # pairs on or above the diagonal only; the other terms keep sub-blocks of sub_rows (4096).
    # Sizes scaled down: "wide" from 64 columns, sub-blocks of 16 rows; the device is only read
    # for its type, so CPU tensors stand in for the GPU's (syrk, a CPU routine, is off).
    monkeypatch.setattr(ntk_terms, "_SYRK_MIN_WIDTH", 64)
    monkeypatch.setattr(ntk_tuning, "GPU", dataclasses.replace(ntk_tuning.GPU, wide_rows=16))
    monkeypatch.setattr(blas_syrk, "available", lambda: False)
    gen = torch.Generator().manual_seed(3)
    examples = 64
    wide = Dense(torch.randn(examples, 100, generator=gen, dtype=torch.float64))
    narrow = Dense(torch.randn(examples, 7, generator=gen, dtype=torch.float64))
    factored = FactoredGrad(
        torch.randn(examples, 4, 6, generator=gen, dtype=torch.float64),
        torch.randn(examples, 3, 4, 2, generator=gen, dtype=torch.float64),
        False,
    )
    block = [wide, factored, narrow]
    calls = {"gram": 0, "contract": 0}
    for name in calls:
        original = getattr(ntk_terms, name)

        def counted(*args, _original=original, _name=name):  # type: ignore[no-untyped-def]
            calls[_name] += 1
            return _original(*args)

        monkeypatch.setattr(ntk_terms, name, counted)
    halves = [(0, [t[0:32] for t in block]), (32, [t[32:64] for t in block])]  # two panel pieces
    kernel = torch.zeros(examples, examples, dtype=torch.float64)
    ntk_schedule._add_self(kernel, halves, torch.device("cuda"))
    calls_seen = dict(calls)
    want = ntk_terms.contract(block, block)
    torch.testing.assert_close(kernel, want, rtol=1e-12, atol=1e-12)
    # wide: 4 sub-blocks -> 4 Gram matrices and 6 products; the rest: one sub-block per piece
    # -> 2 Gram matrices and 1 product.
    assert calls_seen == {"gram": 6, "contract": 7}
    assert ntk_schedule._gram_rows(wide, torch.device("cuda")) == 16
    assert ntk_schedule._gram_rows(narrow, torch.device("cuda")) == ntk_schedule.sub_rows(
        torch.device("cuda")
    )
    assert ntk_schedule._gram_rows(wide, torch.device("cpu")) == ntk_schedule.sub_rows(
        torch.device("cpu")
    )  # on the CPU without syrk: as before
