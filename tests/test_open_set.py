"""The open-set bench's protocol helpers (bench/open_set.py): who is enrolled, who is a stranger,
which probes become negatives, and the "not this person" veto the service ships."""

from __future__ import annotations

import numpy as np

from bench.open_set import (
    VETOED,
    fuse_max,
    halves,
    held_out_people,
    merge_duplicates,
    split,
    veto,
    wrong_matches,
)


def test_split_holds_out_people_and_single_photo_people() -> None:
    labels = np.array(["a", "a", "a", "b", "b", "c", "d", "d"])
    files = np.array(["a2", "a1", "a3", "b1", "b2", "c1", "d1", "d2"])
    gallery, owner, genuine, strangers = split(labels, files, 5, np.array(["d"]))
    # a: 2 of 3 enrolled by file name, b: 1 of 2; c has one photo, d is held out
    assert labels[gallery].tolist() == ["a", "a", "b"]
    assert files[gallery].tolist() == ["a1", "a2", "b1"]
    assert owner.tolist() == [0, 0, 1]
    assert files[genuine].tolist() == ["a3", "b2"]
    assert sorted(files[strangers].tolist()) == ["c1", "d1", "d2"]


def test_held_out_people_is_a_seeded_half() -> None:
    labels = np.repeat(np.arange(11).astype(str), 3)
    first = held_out_people(labels, 0)
    assert first.size == 5 and np.unique(first).size == 5
    assert np.array_equal(first, held_out_people(labels, 0))
    assert not np.array_equal(first, held_out_people(labels, 1))


def test_halves_split_strangers_by_person_and_genuine_by_photo() -> None:
    genuine_subject = np.arange(10) % 3
    stranger_labels = np.repeat(np.array(["x", "y", "z", "w"]), 3)
    fb_g, te_g, fb_s, te_s = halves(genuine_subject, stranger_labels, 0)
    assert sorted(np.concatenate([fb_g, te_g]).tolist()) == list(range(10))
    assert fb_g.size == 5
    assert sorted(np.concatenate([fb_s, te_s]).tolist()) == list(range(12))
    assert not set(stranger_labels[fb_s]) & set(stranger_labels[te_s])
    assert fb_s.size == te_s.size == 6
    # the variant where the same stranger comes back: split photo by photo
    _, _, fb_s, te_s = halves(genuine_subject, stranger_labels, 0, strangers_by_person=False)
    assert sorted(np.concatenate([fb_s, te_s]).tolist()) == list(range(12))
    assert set(stranger_labels[fb_s]) & set(stranger_labels[te_s])


def test_wrong_matches_marks_strangers_and_misidentified_probes_above_threshold() -> None:
    scores = np.array(
        [
            [0.9, 0.1],  # genuine of subject 0, right: not marked
            [0.2, 0.8],  # genuine of subject 0 matched to 1: marked as a negative of 1
            [0.6, 0.3],  # stranger matched to 0: marked
            [0.3, 0.2],  # stranger below the threshold: unknown, not marked
        ],
        dtype=np.float32,
    )
    truth = np.array([0, 0, -1, -1])
    rows, subjects = wrong_matches(scores, truth, 0.5)
    assert rows.tolist() == [1, 2]
    assert subjects.tolist() == [1, 0]
    # with a margin, an answer that would be ambiguous is not a match, so it is not marked
    rows, _ = wrong_matches(np.array([[0.6, 0.58]], dtype=np.float32), np.array([-1]), 0.5, 0.05)
    assert rows.size == 0


def test_veto_drops_a_subject_whose_negative_is_at_least_as_close_as_its_best_face() -> None:
    gallery_scores = np.array([[0.70, 0.60, 0.50]], dtype=np.float32)
    # negatives: two of subject 0 (one at 0.70: as close as its face), none of 1, one of 2
    negative_scores = fuse_max(
        np.array([[0.70, 0.20, 0.49]], dtype=np.float32), np.array([0, 0, 2]), 3
    )
    assert negative_scores[0, 1] < -1  # no negatives: never vetoed
    vetoed = veto(gallery_scores, negative_scores)
    assert vetoed.tolist() == [[VETOED, np.float32(0.60), np.float32(0.50)]]
    # the answer falls to the next subject; a variant n >= s + d with d > 0 keeps subject 0
    assert int(np.argmax(vetoed)) == 1
    assert veto(gallery_scores, negative_scores, 0.01)[0, 0] == np.float32(0.70)
    # every candidate vetoed: nothing reaches any threshold (unknown)
    assert veto(gallery_scores, np.full_like(gallery_scores, 0.9)).max() < -1


def test_merge_duplicates_joins_one_person_under_two_labels_only() -> None:
    rng = np.random.default_rng(0)
    centres = np.linalg.qr(rng.standard_normal((8, 8)))[0][:4]  # 4 orthogonal people
    labels = np.repeat(np.array(["p", "q", "r", "s"]), 3)
    emb = np.repeat(centres, 3, axis=0) + 0.05 * rng.standard_normal((12, 8))
    emb[labels == "s"] = centres[1] + 0.05 * rng.standard_normal((3, 8))  # s is q again
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    merged_labels, merged = merge_duplicates(labels, emb)
    assert merged == {"s": "q"}
    assert merged_labels.tolist() == ["p"] * 3 + ["q"] * 3 + ["r"] * 3 + ["q"] * 3
    assert labels[-1] == "s"  # the caller's labels are left alone
