"""Merged blocks (:func:`conetool.ntk_terms.merged`): the dense terms of a block side by side as
one matrix give the same kernel entries as the terms one by one."""

from __future__ import annotations

import torch

from conetool import ntk_terms
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
