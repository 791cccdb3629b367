"""Ablations as data: validation, the pure ``apply``, reference statistics, patches, sites."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from codi_fixtures.study.interventions import (
    ABLATION_KINDS,
    Ablation,
    AblationRef,
    EmbeddingSite,
    ResidualSite,
    apply,
    build_patch,
    parse_site,
)

N_PROBLEMS, N_THOUGHTS, DIM = 7, 6, 5


@pytest.fixture
def ref() -> AblationRef:
    """Reference statistics of random site values (N problems, T thoughts, d dims)."""
    gen = torch.Generator().manual_seed(0)
    values = torch.randn((N_PROBLEMS, N_THOUGHTS, DIM), generator=gen) * 2 + 1
    return AblationRef.from_values(values, seed=0)


def _copy(ref: AblationRef) -> AblationRef:
    return AblationRef(
        values=ref.values.clone(),
        mean=ref.mean.clone(),
        noise=ref.noise.clone(),
        donors=ref.donors.clone(),
    )


# --- validation ----------------------------------------------------------------------------
def test_unknown_kind_lists_the_allowed_kinds() -> None:
    with pytest.raises(ValueError, match="unknown ablation kind 'shuffle'") as err:
        Ablation((1,), "shuffle")  # type: ignore[arg-type]
    for allowed in ("zero", "mean", "noise", "resample"):
        assert allowed in str(err.value)
    assert set(ABLATION_KINDS) == {"zero", "mean", "noise", "resample"}


@pytest.mark.parametrize("thoughts", [(), (-1,), (2, -3)])
def test_thought_indices_are_validated(thoughts: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="thought"):
        Ablation(thoughts, "zero")


def test_check_rejects_thoughts_beyond_the_model() -> None:
    Ablation((5,), "zero").check(6)
    with pytest.raises(ValueError, match=r"thought index 6 out of range.*6 thoughts \(0\.\.5\)"):
        Ablation((2, 6), "zero").check(6)


def test_apply_checks_the_thought_range(ref: AblationRef) -> None:
    with pytest.raises(ValueError, match="out of range"):
        apply(Ablation((N_THOUGHTS,), "zero"), ref.values[0], ref, 0)


def test_names() -> None:
    assert Ablation((3,), "mean").name == "t3-mean"
    assert Ablation(tuple(range(6)), "zero").name == "all-zero"


def test_residual_site_layer_must_be_non_negative() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        ResidualSite(-1)


# --- apply: pure, and the documented values ----------------------------------------------------
@pytest.mark.parametrize("ablation_kind", ABLATION_KINDS)
def test_apply_is_pure(ref: AblationRef, ablation_kind: str) -> None:
    ablation = Ablation((1, 4), ablation_kind)  # type: ignore[arg-type]
    value = ref.values[3].clone()
    before_value, before_ref = value.clone(), _copy(ref)
    out = apply(ablation, value, ref, problem=3)
    assert torch.equal(value, before_value)
    for name in ("values", "mean", "noise", "donors"):
        assert torch.equal(getattr(ref, name), getattr(before_ref, name))
    assert out.data_ptr() != value.data_ptr()
    # Only the ablated thoughts change.
    untouched = [t for t in range(N_THOUGHTS) if t not in (1, 4)]
    assert torch.equal(out[untouched], value[untouched])
    assert not torch.equal(out[[1, 4]], value[[1, 4]])


def test_zero(ref: AblationRef) -> None:
    out = apply(Ablation((2,), "zero"), ref.values[0], ref, 0)
    assert torch.equal(out[2], torch.zeros(DIM))


def test_mean_is_the_per_thought_mean_of_the_other_problems(ref: AblationRef) -> None:
    out = apply(Ablation((0, 5), "mean"), ref.values[4], ref, 4)
    others = [i for i in range(N_PROBLEMS) if i != 4]
    for t in (0, 5):
        torch.testing.assert_close(out[t], ref.values[others, t].mean(dim=0))
    assert not torch.allclose(ref.mean[4, 0], ref.mean[4, 5])  # per thought, not pooled


@pytest.mark.parametrize("kind", ["mean", "noise"])
def test_a_problem_never_contributes_to_its_own_reference(kind: str) -> None:
    """Changing problem 3's values leaves its mean and noise scale unchanged (leave-one-out)."""
    gen = torch.Generator().manual_seed(2)
    values = torch.randn((N_PROBLEMS, N_THOUGHTS, DIM), generator=gen)
    changed = values.clone()
    changed[3] *= 100.0
    a, b = AblationRef.from_values(values, seed=0), AblationRef.from_values(changed, seed=0)
    out_a = apply(Ablation((1,), kind), values[3], a, 3)  # type: ignore[arg-type]
    out_b = apply(Ablation((1,), kind), changed[3], b, 3)  # type: ignore[arg-type]
    torch.testing.assert_close(out_a[1], out_b[1])
    assert not torch.allclose(a.mean[0], b.mean[0])  # problem 3 does enter the others' means


@pytest.mark.parametrize("kind", ["mean", "noise", "resample"])
def test_a_reference_of_one_problem_is_refused(kind: str) -> None:
    ref = AblationRef.from_values(torch.ones((1, N_THOUGHTS, DIM)))
    with pytest.raises(ValueError, match="at least 2 problems"):
        apply(Ablation((0,), kind), ref.values[0], ref, 0)  # type: ignore[arg-type]


def test_noise_uses_the_problem_s_seeded_draw(ref: AblationRef) -> None:
    out = apply(Ablation((3,), "noise"), ref.values[2], ref, 2)
    assert torch.equal(out[3], ref.noise[2, 3])
    again = AblationRef.from_values(ref.values, seed=0)
    other = AblationRef.from_values(ref.values, seed=1)
    assert torch.equal(again.noise, ref.noise)
    assert not torch.equal(other.noise, ref.noise)


def test_noise_std_matches_the_site_rms() -> None:
    """Per (thought, dim), the noise has mean 0 and std equal to the site's RMS."""
    gen = torch.Generator().manual_seed(1)
    n = 40_000
    loc = torch.tensor([[0.0, 3.0, -1.0], [2.0, 0.0, 0.5]])  # (T=2, d=3)
    scale = torch.tensor([[1.0, 0.5, 2.0], [0.1, 4.0, 1.0]])
    values = loc + scale * torch.randn((n, 2, 3), generator=gen)
    ref = AblationRef.from_values(values, seed=3)
    rms = (loc**2 + scale**2).sqrt()
    torch.testing.assert_close(ref.noise.std(dim=0), rms, rtol=0.03, atol=0)
    assert (ref.noise.mean(dim=0).abs() < 4 * rms / n**0.5).all()


def test_resample_takes_the_donor_s_value(ref: AblationRef) -> None:
    for problem in range(N_PROBLEMS):
        donor = int(ref.donors[problem])
        assert donor != problem
        out = apply(Ablation((1, 2), "resample"), ref.values[problem], ref, problem)
        assert torch.equal(out[[1, 2]], ref.values[donor, [1, 2]])


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 50), seed=st.integers(0, 2**31 - 1))
def test_donors_are_a_derangement(n: int, seed: int) -> None:
    """Every problem donates exactly once and never to itself."""
    donors = AblationRef.from_values(torch.zeros((n, 1, 1)), seed=seed).donors
    assert sorted(donors.tolist()) == list(range(n))
    assert (donors != torch.arange(n)).all()


def test_resample_needs_two_problems() -> None:
    ref = AblationRef.from_values(torch.ones((1, 2, 3)))
    with pytest.raises(ValueError, match="at least 2 problems"):
        apply(Ablation((0,), "resample"), ref.values[0], ref, 0)


# --- build_patch ------------------------------------------------------------------------------
def test_build_patch_masks_exactly_the_ablated_thoughts(ref: AblationRef) -> None:
    ablations = [None, Ablation((2,), "zero"), Ablation((0, 3), "mean"), None]
    problems = [0, 1, 5, 5]
    patch = build_patch(ablations, problems, ref)
    expected = torch.zeros((4, N_THOUGHTS), dtype=torch.bool)
    expected[1, 2] = True
    expected[2, [0, 3]] = True
    assert torch.equal(patch.mask, expected)
    assert patch.layer is None
    for row, (ablation, problem) in enumerate(zip(ablations, problems, strict=True)):
        clean = ref.values[problem]
        want = clean if ablation is None else apply(ablation, clean, ref, problem)
        assert torch.equal(patch.values[row], want)


@pytest.mark.parametrize("kind", ["zero", "mean", "noise", "resample"])
def test_build_patch_rows_equal_apply_row_by_row(ref: AblationRef, kind: str) -> None:
    """The grouped writes give every row exactly what ``apply`` gives it alone."""
    conditions = [Ablation((t,), kind) for t in range(N_THOUGHTS)]  # type: ignore[arg-type]
    conditions.append(Ablation(tuple(range(N_THOUGHTS)), kind))  # type: ignore[arg-type]
    ablations = [None, *conditions] * 3
    problems = [p for p in (4, 0, 6) for _ in range(len(conditions) + 1)]
    patch = build_patch(ablations, problems, ref)
    for row, (ablation, problem) in enumerate(zip(ablations, problems, strict=True)):
        if ablation is None:
            assert torch.equal(patch.values[row], ref.values[problem])
            assert not patch.mask[row].any()
        else:
            assert torch.equal(
                patch.values[row], apply(ablation, ref.values[problem], ref, problem)
            )
            assert patch.mask[row].tolist() == [t in ablation.thoughts for t in range(N_THOUGHTS)]


def test_build_patch_reports_what_apply_reports(ref: AblationRef) -> None:
    """A thought beyond the model, or a reference of one problem, is refused by name."""
    with pytest.raises(ValueError, match="thought index 6 out of range"):
        build_patch([None, Ablation((6,), "zero")], [0, 1], ref)
    one = AblationRef.from_values(ref.values[:1])
    with pytest.raises(ValueError, match="mean ablation needs at least 2 problems"):
        build_patch([Ablation((0,), "mean")], [0], one)


def test_build_patch_residual_site_sets_the_layer(ref: AblationRef) -> None:
    site = ResidualSite(3)
    patch = build_patch([Ablation((1,), "zero", site), None], [0, 1], ref)
    assert patch.layer == 3
    assert patch.mask.tolist()[1] == [False] * N_THOUGHTS


def test_build_patch_does_not_modify_the_reference(ref: AblationRef) -> None:
    before = _copy(ref)
    build_patch([Ablation((0, 1, 2), "zero")], [4], ref)
    assert torch.equal(ref.values, before.values)


def test_build_patch_refuses_mixed_sites(ref: AblationRef) -> None:
    ablations = [Ablation((1,), "zero"), Ablation((1,), "zero", ResidualSite(2))]
    with pytest.raises(ValueError, match="one site"):
        build_patch(ablations, [0, 1], ref)


def test_build_patch_needs_one_ablation_per_row(ref: AblationRef) -> None:
    with pytest.raises(ValueError, match="one ablation"):
        build_patch([None], [0, 1], ref)


# --- sites ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "site"),
    [
        ("embedding", EmbeddingSite()),
        ("block3", ResidualSite(3)),
        ("block:3", ResidualSite(3)),
        ("block0", ResidualSite(0)),
        ("block15", ResidualSite(15)),
    ],
)
def test_parse_site(text: str, site: object) -> None:
    assert parse_site(text, n_layers=16) == site


def test_site_names_round_trip() -> None:
    for site in (EmbeddingSite(), ResidualSite(7)):
        assert parse_site(str(site), n_layers=16) == site
    assert EmbeddingSite().layer is None


@pytest.mark.parametrize("text", ["block16", "block:99"])
def test_parse_site_layer_out_of_range(text: str) -> None:
    with pytest.raises(ValueError, match=r"out of range, the model has 16 blocks \(0\.\.15\)"):
        parse_site(text, n_layers=16)


@pytest.mark.parametrize(
    "text", ["", "block", "block:", "blockx", "block-1", "attn3", "Embedding", "block 3", "L3"]
)
def test_parse_site_rejects_junk(text: str) -> None:
    with pytest.raises(ValueError, match=r"unknown ablation site .*'embedding' or 'block<L>'"):
        parse_site(text, n_layers=16)
