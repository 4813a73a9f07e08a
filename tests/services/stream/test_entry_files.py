"""Which stream entries a consumer's written files already hold: the check run for every entry it reads."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.stream.entry_files import WrittenRanges, entry_order, range_name


def test_entries_inside_a_written_range_are_held_and_others_not() -> None:
    ranges = WrittenRanges(["stream-100-0_100-5", "stream-90-0_95-1", "stream-notarange"], prefix="stream-")
    assert ranges.holds(b"100-0") and ranges.holds(b"100-5") and ranges.holds("93-7")
    assert not ranges.holds(b"100-6")  # newer than every file: the case of every entry while nothing crashed
    assert not ranges.holds(b"96-0")  # between two files
    assert not ranges.holds(b"89-9")
    ranges.add("stream-120-0_130-0")
    assert ranges.holds(b"125-3") and not ranges.holds(b"131-0")


def test_no_file_holds_nothing() -> None:
    assert not WrittenRanges().holds(b"1-0")


def test_a_range_name_round_trips() -> None:
    name = range_name([b"7-2", b"5-0", b"6-1"])
    assert name == "5-0_7-2" and WrittenRanges([name]).holds(b"6-9")


entry_ids = st.tuples(st.integers(0, 50), st.integers(0, 3)).map(lambda t: f"{t[0]}-{t[1]}")


@given(
    st.lists(st.tuples(entry_ids, entry_ids), max_size=12),
    st.lists(entry_ids, min_size=1, max_size=20),
)
def test_it_answers_what_scanning_every_file_answers(spans: list[tuple[str, str]], probes: list[str]) -> None:
    """Added one by one or listed at once, in any order, overlapping or not: the same answer as checking each
    file's range in turn."""
    names = [f"{min(a, b, key=entry_order)}_{max(a, b, key=entry_order)}" for a, b in spans]
    added = WrittenRanges()
    for name in names:
        added.add(name)
    listed = WrittenRanges(names)  # as read from a folder, in any order
    for probe in probes:
        scanned = any(
            entry_order(n.split("_")[0]) <= entry_order(probe) <= entry_order(n.split("_")[1]) for n in names
        )
        assert added.holds(probe) == listed.holds(probe) == scanned, (names, probe)
