"""What the demo reports of a rollout: from an alias move to the first decision by the new version, and errors."""

from __future__ import annotations

from deploy.local.rollout_drill import Answer, Probes


def probes_with(*answers: tuple[float, int, str | None]) -> Probes:
    probes = Probes("http://unused")
    probes.answers = [Answer(*a) for a in answers]
    return probes


def test_a_move_is_timed_to_the_first_decision_by_the_new_version_after_it() -> None:
    # v2 answered once before the move (a canary, say): that answer does not count.
    probes = probes_with(
        (9.0, 200, "2"), (10.0, 200, "1"), (10.4, 503, None), (10.9, 200, "1"), (11.2, 200, "2")
    )
    move = probes.watch("1", "2", moved_at=10.1, why="test", timeout=0)
    assert move.seconds is not None and abs(move.seconds - 1.1) < 1e-9
    assert move.errors == 1 and probes.failed == 1


def test_a_version_that_never_decides_has_no_time() -> None:
    probes = probes_with((10.0, 200, "1"), (10.5, 200, "1"))
    move = probes.watch("1", "2", moved_at=10.1, why="test", timeout=0)
    assert move.seconds is None and move.errors == 0
    assert move.as_dict()["to"] == "2"
