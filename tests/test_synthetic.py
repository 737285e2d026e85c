import numpy as np
import pytest

from idglow.faces.base import l2_normalize
from idglow.synthetic import (
    SceneSpec,
    SyntheticFaceAnalyzer,
    SyntheticWorld,
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
