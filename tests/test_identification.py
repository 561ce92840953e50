"""The identify decision rule (service.identification) on its own."""

from __future__ import annotations

from service.identification import Answer, SubjectCandidate, decide, vote


def subject(sid: str, score: float) -> SubjectCandidate:
    return SubjectCandidate(sid, sid.title(), 1, score, 1)


def test_below_the_threshold_is_unknown_whatever_the_margin() -> None:
    answer = decide([subject("a", 0.40), subject("b", 0.10)], threshold=0.42, margin=0.0)
    assert (answer.decision, answer.match, answer.contenders) == ("unknown", None, [])
    assert decide([], threshold=0.42, margin=0.05).decision == "unknown"


def test_a_runner_up_within_the_margin_makes_it_ambiguous_with_both() -> None:
    a, b = subject("a", 0.60), subject("b", 0.57)
    answer = decide([a, b], threshold=0.42, margin=0.05)
    assert answer.decision == "ambiguous" and answer.match is None
    assert answer.contenders == [a, b]
    # the runner-up counts even below the threshold: it still fits almost as well
    low = subject("b", 0.40)
    assert decide([subject("a", 0.43), low], threshold=0.42, margin=0.05).decision == "ambiguous"


def test_a_clear_lead_or_no_margin_is_a_match() -> None:
    a = subject("a", 0.60)
    assert decide([a, subject("b", 0.50)], threshold=0.42, margin=0.05).match == a
    assert decide([a, subject("b", 0.60)], threshold=0.42, margin=0.0).match == a  # off
    assert decide([a], threshold=0.42, margin=0.05).match == a  # no runner-up


def test_a_cluster_looks_like_the_subject_most_members_match_and_never_on_no_match() -> None:
    def matched(sid: str, score: float) -> Answer:
        return Answer("match", subject(sid, score), [])

    unknown, torn = Answer("unknown", None, []), Answer("ambiguous", None, [])
    assert vote([unknown, torn]) is None and vote([]) is None
    best, agreeing = vote([matched("a", 0.5), unknown, matched("b", 0.9), matched("a", 0.6)])
    assert (best.subject_id, best.score, agreeing) == ("a", 0.6, 2)  # most members, then cosine
    best, agreeing = vote([matched("a", 0.5), matched("b", 0.7)])
    assert (best.subject_id, agreeing) == ("b", 1)
