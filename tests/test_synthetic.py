import numpy as np
import pytest

from idglow.faces.base import l2_normalize
from idglow.synthetic import (
    ADULT_AGE,
    CHILD_AGE,
    SceneSpec,
    SyntheticFaceAnalyzer,
    SyntheticWorld,
    judge_scores,
    layout_errors,
    oracle_preference,
    oracle_scores,
    scene_metrics,
)


@pytest.fixture(scope="module")
def world():
    return SyntheticWorld()


@pytest.fixture(scope="module")
def analyzer(world):
    return SyntheticFaceAnalyzer(world)


def test_world_is_deterministic_in_its_seed():
    a, b, c = SyntheticWorld(seed=3), SyntheticWorld(seed=3), SyntheticWorld(seed=4)
    assert np.array_equal(a.patterns, b.patterns)
    assert not np.array_equal(a.patterns, c.patterns)


def test_scenes_have_two_to_four_separate_people(world, analyzer):
    rng = np.random.default_rng(0)
    counts = set()
    for _ in range(20):
        spec = world.sample_scene(rng)
        counts.add(spec.num_subjects)
        latent = world.render_scene(spec)
        assert latent.shape == world.latent_shape
        faces = analyzer.detect(latent)
        assert len(faces) == spec.num_subjects
    assert counts == {2, 3, 4}


def test_encoder_recovers_identity_and_separates_people(world, analyzer):
    rng = np.random.default_rng(1)
    spec = world.sample_scene(rng, num_subjects=4)
    m = scene_metrics(analyzer, world.render_scene(spec), spec)
    assert m["identity"] > 0.999 and m["missing"] == 0 and m["extra"] == 0
    codes = world.random_codes(100, rng)
    emb = np.stack([world.code_embedding(z) for z in codes])
    off = (emb @ emb.T)[np.triu_indices(100, 1)]
    assert off.mean() < 0.2  # different people are far apart


def test_age_transform_keeps_code_and_changes_structure(world, analyzer):
    rng = np.random.default_rng(2)
    adult = world.sample_scene(rng, num_subjects=3)
    child = world.age_transform(adult, [True, False, True])
    latent = world.render_scene(child)
    m = scene_metrics(analyzer, latent, child)
    assert all(s > 0.999 for s in m["code_similarity"])
    assert all(m["structure_ok"])
    faces = {tuple(f.bbox): f for f in analyzer.detect(latent)}
    assert sorted(f.age for f in faces.values()) == sorted(child.target_ages)
    # the embedding carries a little structure: adult reference vs its child rendering is similar, not equal
    ref = analyzer.embed_reference(world.reference(adult.codes[0]))
    sim_child = float(ref @ world.code_embedding(adult.codes[0], child=True))
    assert 0.6 < sim_child < 0.95


def test_noise_lowers_identity_and_oracle_prefers_the_clean_scene(world, analyzer):
    rng = np.random.default_rng(3)
    spec = world.sample_scene(rng, num_subjects=2)
    clean = world.render_scene(spec)
    noisy = clean.copy()
    x1, y1, x2, y2 = spec.boxes[1]
    noisy[1:, y1:y2, x1:x2] = rng.standard_normal((world.channels - 1, y2 - y1, x2 - x1))
    s_clean, s_noisy = oracle_scores(analyzer, clean, spec), oracle_scores(analyzer, noisy, spec)
    pref, strength = oracle_preference(s_noisy, s_clean)
    assert pref[0] == -1  # overall: image 1 (clean) is better
    assert pref[3] == 0  # identity_0 untouched: tie
    assert pref[4] == -1 and strength[4] == 1.0  # identity_1 clearly worse in the noisy image
    assert pref[5:].tolist() == [0] * 4  # slots that do not exist


def test_prompt_embeddings_describe_the_layout(world):
    rng = np.random.default_rng(4)
    spec = world.sample_scene(rng, num_subjects=2)
    emb, pooled = world.encode_prompt(spec)
    moved = world.sample_scene(rng, num_subjects=2, codes=spec.codes)
    emb2, pooled2 = world.encode_prompt(moved)
    assert emb.shape == (world.max_slots + 1, world.prompt_dim) and pooled.shape == (world.pooled_dim,)
    assert not np.allclose(emb, emb2)
    np.testing.assert_array_equal(pooled, pooled2)
    assert l2_normalize(emb[0]) @ l2_normalize(emb[1]) < 0.99


@pytest.fixture(scope="module")
def grid_world():
    return SyntheticWorld(size=16, adult_shape=(6, 4), child_shape=(4, 4), min_people=2, max_people=3,
                          code_dim=6, embedding_dim=32, layout="grid", grid=(2, 2))


def test_grid_layout_puts_each_person_in_a_distinct_named_cell(grid_world):
    analyzer = SyntheticFaceAnalyzer(grid_world)
    rng = np.random.default_rng(5)
    for _ in range(20):
        spec = grid_world.sample_scene(rng)
        cells = [grid_world.cell_of(box) for box in spec.boxes]
        assert cells == sorted(set(cells))  # distinct cells, people in reading order
        m = scene_metrics(analyzer, grid_world.render_scene(spec), spec)
        assert m["missing"] == 0 and m["extra"] == 0 and m["identity"] > 0.999
        emb, _ = grid_world.encode_prompt(spec)
        moved = grid_world.sample_scene(rng, codes=spec.codes, num_subjects=spec.num_subjects)
        emb2, _ = grid_world.encode_prompt(moved)
        same = [grid_world.cell_of(b) for b in moved.boxes] == cells
        assert np.allclose(emb, emb2) == same  # the prompt names the cells, and nothing about identity


def test_grid_age_transform_stays_in_the_cell(grid_world):
    analyzer = SyntheticFaceAnalyzer(grid_world)
    spec = grid_world.sample_scene(np.random.default_rng(6), num_subjects=3)
    child = grid_world.age_transform(spec, [True, False, True])
    assert [grid_world.cell_of(b) for b in child.boxes] == [grid_world.cell_of(b) for b in spec.boxes]
    m = scene_metrics(analyzer, grid_world.render_scene(child), child)
    assert all(m["structure_ok"]) and all(s > 0.999 for s in m["code_similarity"])


def test_grid_layout_rejects_faces_that_do_not_fit():
    with pytest.raises(ValueError, match="does not fit"):
        SyntheticWorld(size=8, adult_shape=(6, 4), child_shape=(4, 4), layout="grid", grid=(2, 2), max_people=3)
    with pytest.raises(ValueError, match="max_people=5"):
        SyntheticWorld(size=16, adult_shape=(6, 4), child_shape=(4, 4), layout="grid", grid=(2, 2), max_people=5)
    with pytest.raises(ValueError, match="layout='hex'"):
        SyntheticWorld(layout="hex")


def test_artifacts_count_faces_by_position_not_by_likeness(grid_world):
    """A face in its place that resembles nobody is an identity failure (identity match: missing + extra),
    not an artifact; a person left out or a face where nobody stands is."""
    analyzer = SyntheticFaceAnalyzer(grid_world)
    spec = grid_world.sample_scene(np.random.default_rng(7), num_subjects=2)
    stranger = SceneSpec(codes=-spec.codes, child=spec.child, boxes=spec.boxes)  # anti-correlated identities
    m = scene_metrics(analyzer, grid_world.render_scene(stranger), spec)
    assert m["missing"] == 2 and m["extra"] == 2  # nobody is recognised ...
    assert (m["absent"], m["surplus"]) == (0, 0)  # ... but everyone stands where the prompt put them
    assert oracle_scores(analyzer, grid_world.render_scene(stranger), spec)["artifacts"] == 0.0

    one = SceneSpec(codes=spec.codes[:1], child=spec.child[:1], boxes=spec.boxes[:1])
    free = next(c for c in range(grid_world.num_cells) if c not in {grid_world.cell_of(b) for b in spec.boxes})
    crowd = SceneSpec(codes=np.concatenate([spec.codes, spec.codes[:1]]), child=spec.child + [False],
                      boxes=spec.boxes + [grid_world.cell_box(free, False)])
    assert layout_errors(analyzer.detect(grid_world.render_scene(one)), spec) == (1, 0)
    assert layout_errors(analyzer.detect(grid_world.render_scene(crowd)), spec) == (0, 1)
    full, missing = (oracle_scores(analyzer, grid_world.render_scene(s), spec) for s in (spec, one))
    assert missing["artifacts"] == -1.0 and full["artifacts"] == 0.0
    pref, _ = oracle_preference(full, missing)
    assert pref[0] == 1 and pref[2] == 1  # the complete scene wins overall and on artifacts


@pytest.fixture(scope="module")
def words_world():
    return SyntheticWorld(size=16, adult_shape=(6, 4), child_shape=(4, 4), min_people=2, max_people=3,
                          code_dim=6, embedding_dim=32, prompt="words", position_bins=(3, 2))


def test_word_prompts_name_order_coarse_position_and_age_only(words_world):
    """Two scenes whose people fall in the same coarse regions get the same prompt, whatever their exact boxes;
    the age word and the region change it; people are listed left to right."""
    w = words_world
    spec = SceneSpec(codes=w.random_codes(2, np.random.default_rng(0)), child=[False, True],
                     boxes=[(1, 1, 5, 7), (11, 9, 15, 13)])
    nudged = SceneSpec(codes=-spec.codes, child=spec.child, boxes=[(2, 1, 6, 7), (10, 10, 14, 14)])
    assert w.prompt_words(spec) == [["first", "left", "upper", "adult"], ["second", "right", "lower", "child"]]
    np.testing.assert_array_equal(w.encode_prompt(spec)[0], w.encode_prompt(nudged)[0])
    older = SceneSpec(codes=spec.codes, child=[False, False], boxes=spec.boxes)
    moved = SceneSpec(codes=spec.codes, child=spec.child, boxes=[(1, 9, 5, 15), (11, 9, 15, 13)])
    for other in (older, moved):
        assert not np.allclose(w.encode_prompt(spec)[0], w.encode_prompt(other)[0])
    rng = np.random.default_rng(1)
    for _ in range(20):
        boxes = w.sample_scene(rng).boxes
        assert [b[0] + b[2] for b in boxes] == sorted(b[0] + b[2] for b in boxes)


def test_token_prompt_worlds_are_unchanged_by_the_word_vocabulary():
    a, b = SyntheticWorld(seed=2), SyntheticWorld(seed=2, prompt="words")
    np.testing.assert_array_equal(a.prompt_basis, b.prompt_basis)
    np.testing.assert_array_equal(a.patterns, b.patterns)
    with pytest.raises(ValueError, match="prompt='text'"):
        SyntheticWorld(prompt="text")


def test_structure_age_and_layout_accuracy_of_a_scene(words_world):
    w = words_world
    analyzer = SyntheticFaceAnalyzer(w)
    spec = w.sample_scene(np.random.default_rng(3), num_subjects=2)
    child = w.age_transform(spec, [True, False])
    m = scene_metrics(analyzer, w.render_scene(child), child)
    assert m["age_error"] == [0.0, 0.0] and m["layout_accuracy"] == 1.0
    adult_drawn = scene_metrics(analyzer, w.render_scene(spec), child)  # a child requested, an adult drawn
    assert adult_drawn["age_error"] == [ADULT_AGE - CHILD_AGE, 0.0]
    flipped = SceneSpec(codes=spec.codes, child=spec.child,
                        boxes=[(x1, w.size - y2, x2, w.size - y1) for x1, y1, x2, y2 in spec.boxes])
    if [w.position_words(b) for b in flipped.boxes] != [w.position_words(b) for b in spec.boxes]:
        assert scene_metrics(analyzer, w.render_scene(flipped), spec)["layout_accuracy"] < 1.0


def test_reference_embedding_carries_the_reference_age_structure(words_world):
    w = words_world
    analyzer = SyntheticFaceAnalyzer(w)
    code = w.random_codes(1, np.random.default_rng(4))[0]
    adult_ref = analyzer.embed_reference(w.reference(code))
    assert float(adult_ref @ w.code_embedding(code)) > 0.999
    assert float(adult_ref @ w.code_embedding(code, child=True)) < 0.95


def test_judge_reads_identity_where_the_prompt_puts_people(grid_world):
    """The judge (used for win rates) finds people by position and scores the identity code only: a child
    drawn for an adult keeps its identity score; strangers, missing people and extra faces lower it."""
    analyzer = SyntheticFaceAnalyzer(grid_world)
    spec = grid_world.sample_scene(np.random.default_rng(8), num_subjects=2)
    clean = judge_scores(analyzer, grid_world.render_scene(spec), spec)
    assert clean["identity"] == pytest.approx([1.0, 1.0], abs=1e-4) and clean["unclaimed"] == 0
    child = judge_scores(analyzer, grid_world.render_scene(grid_world.age_transform(spec, [True, True])), spec)
    assert child["overall"] == pytest.approx(clean["overall"], abs=1e-4)
    stranger = SceneSpec(codes=-spec.codes, child=spec.child, boxes=spec.boxes)
    assert judge_scores(analyzer, grid_world.render_scene(stranger), spec)["overall"] < 0
    one = SceneSpec(codes=spec.codes[:1], child=spec.child[:1], boxes=spec.boxes[:1])
    assert judge_scores(analyzer, grid_world.render_scene(one), spec)["identity"][1] == 0.0
    free = next(c for c in range(grid_world.num_cells) if c not in {grid_world.cell_of(b) for b in spec.boxes})
    crowd = SceneSpec(codes=np.concatenate([spec.codes, spec.codes[:1]]), child=spec.child + [False],
                      boxes=spec.boxes + [grid_world.cell_box(free, False)])
    crowded = judge_scores(analyzer, grid_world.render_scene(crowd), spec)
    assert crowded["unclaimed"] == 1 and crowded["overall"] == pytest.approx(clean["overall"] - 0.25, abs=1e-4)


def test_ratio_interval_brackets_the_pooled_ratio():
    from idglow.training.synthetic_runs import ratio_interval

    rng = np.random.default_rng(0)
    num, den = rng.integers(0, 4, 200).astype(float), np.full(200, 3.0)
    est, low, high = ratio_interval(num, den)
    assert est == pytest.approx(num.sum() / den.sum()) and low < est < high and high - low < 0.2
    assert ratio_interval(np.ones(50), np.ones(50))[1:] == (1.0, 1.0)
    with pytest.raises(ValueError, match="equal non-empty"):
        ratio_interval([1.0, 2.0], [1.0])


def test_swapped_people_score_high_by_likeness_and_low_in_place(grid_world):
    """Two people drawn in each other's places: the Hungarian match still finds both (identity ≈ 1), but the
    labeller and the judge read identity in each person's box and count two swaps."""
    analyzer = SyntheticFaceAnalyzer(grid_world)
    spec = grid_world.sample_scene(np.random.default_rng(9), num_subjects=2)
    swapped = SceneSpec(codes=spec.codes[::-1].copy(), child=spec.child[::-1], boxes=spec.boxes)
    latent = grid_world.render_scene(swapped)
    m = scene_metrics(analyzer, latent, spec)
    assert m["identity"] > 0.999 and all(s > 0.999 for s in m["code_similarity"])  # likeness sees nothing
    assert m["in_place"] == [False, False] and m["swaps"] == 2
    cross = float(l2_normalize(spec.codes[0]) @ l2_normalize(spec.codes[1]))
    assert m["place_code_similarity"] == pytest.approx([cross, cross], abs=1e-4)
    assert m["identity_in_place"] < 0.9
    right = scene_metrics(analyzer, grid_world.render_scene(spec), spec)
    assert right["in_place"] == [True, True] and right["swaps"] == 0 and right["identity_in_place"] > 0.999

    oracle_swapped, oracle_right = oracle_scores(analyzer, latent, spec), oracle_scores(analyzer,
                                                                                       grid_world.render_scene(spec), spec)
    assert oracle_swapped["swaps"] == 2 and oracle_swapped["identity"] == pytest.approx(m["place_similarity"])
    assert oracle_right["overall"] - oracle_swapped["overall"] > 0.1  # the labeller prefers the right order
    pref, _ = oracle_preference(oracle_right, oracle_swapped, max_slots=grid_world.max_slots)
    assert pref[0] == 1 and list(pref[3:5]) == [1, 1]
    judged = judge_scores(analyzer, latent, spec)
    assert judged["swaps"] == 2 and judged["identity"] == pytest.approx([cross, cross], abs=1e-4)
    assert judge_scores(analyzer, grid_world.render_scene(spec), spec)["swaps"] == 0


def test_a_mixed_scene_keeps_each_persons_build_with_their_box():
    """Word prompts list people left to right, so the layout sorts the boxes: the child flags must follow."""
    from idglow.training.synthetic_runs import learning_world_v2

    world = learning_world_v2()
    for seed in range(20):
        spec = world.sample_scene(np.random.default_rng(seed), child=[True, False, False])
        shapes = [(y2 - y1, x2 - x1) for x1, y1, x2, y2 in spec.boxes]
        assert [world.face_shape(c) for c in spec.child] == shapes
        assert sorted(spec.child) == [False, False, True]
