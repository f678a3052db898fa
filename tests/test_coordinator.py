"""The coordinator's grouping, races and deadlines with fake members (no Triton)."""

import time

import numpy as np
import pytest

from coded_serving.codes import ParMAddition
from coded_serving.coordinator import Coordinator, GroupLayout, invalid_query_reason

K = 2
MEMBERS = ("m0", "m1", "parity")


def model(batch):
    """A linear 'model', so a perfect parity model is the same function minus its bias."""
    return batch.reshape(len(batch), -1)[:, :3] * 2.0 + 1.0


class FakeMembers:
    """Members with a delay (seconds) or an exception each; records what they were sent."""

    def __init__(self, delays=None, failures=()):
        self.delays = delays or {}
        self.failures = set(failures)
        self.sent = {}

    def __call__(self, member, batch):
        self.sent[member] = batch
        time.sleep(self.delays.get(member, 0.0))
        if member in self.failures:
            raise RuntimeError(f"{member} is down")
        outputs = model(batch)
        return outputs + (K - 1) if member == "parity" else outputs


def infer(queries, members, deadline_s=0.05, timeout_s=1.0):
    coordinator = Coordinator(ParMAddition(K), MEMBERS, deadline_s, timeout_s)
    return coordinator.infer(queries, members)


queries = np.arange(4 * 3, dtype=np.float32).reshape(4, 3)


def test_layout_fills_a_partial_group_with_copies_of_its_own_queries():
    np.testing.assert_array_equal(GroupLayout.for_queries(5, 2).slots, [[0, 1], [2, 3], [4, 4]])
    np.testing.assert_array_equal(GroupLayout.for_queries(4, 3).slots, [[0, 1, 2], [3, 3, 3]])
    np.testing.assert_array_equal(GroupLayout.for_queries(5, 4).slots, [[0, 1, 2, 3], [4, 4, 4, 4]])
    with pytest.raises(ValueError):
        GroupLayout.for_queries(0, 2)


def test_healthy_members_give_the_originals_and_the_parity_gets_the_sum():
    members = FakeMembers()
    coordinator = Coordinator(ParMAddition(K), MEMBERS, 0.05, 1.0)
    outcome = coordinator.infer(queries, members)
    coordinator.executor.shutdown(wait=True)  # the race may end before the parity call has even started
    np.testing.assert_allclose(outcome.outputs, model(queries))
    assert not outcome.reconstructed.any() and not outcome.errors
    np.testing.assert_array_equal(members.sent["m0"], queries[[0, 2]])
    np.testing.assert_array_equal(members.sent["parity"], queries[[0, 2]] + queries[[1, 3]])


def test_failed_member_is_reconstructed_at_once_not_at_the_deadline():
    members = FakeMembers(failures={"m1"})
    coordinator = Coordinator(ParMAddition(K), MEMBERS, deadline_s=10.0, timeout_s=20.0)
    start = time.monotonic()
    outcome = coordinator.infer(queries, members)
    assert time.monotonic() - start < 2.0
    np.testing.assert_allclose(outcome.outputs, model(queries), rtol=1e-6)
    np.testing.assert_array_equal(outcome.reconstructed, [False, True, False, True])
    assert "m1 is down" in outcome.worker_errors[1]


def test_straggler_is_replaced_after_the_deadline_and_originals_are_kept():
    members = FakeMembers(delays={"m0": 5.0})
    start = time.monotonic()
    coordinator = Coordinator(ParMAddition(K), MEMBERS, deadline_s=0.05, timeout_s=1.0)
    outcome = coordinator.infer(queries, members)
    elapsed = time.monotonic() - start
    assert 0.05 <= elapsed < 1.0
    np.testing.assert_allclose(outcome.outputs, model(queries), rtol=1e-6)
    np.testing.assert_array_equal(outcome.reconstructed, [True, False, True, False])


def test_slightly_late_original_within_the_deadline_is_not_replaced():
    outcome = infer(queries, FakeMembers(delays={"m0": 0.01}), deadline_s=0.2)
    assert not outcome.reconstructed.any()


def test_zero_deadline_is_parms_race():
    outcome = infer(queries, FakeMembers(delays={"m0": 0.2}), deadline_s=0.0)
    np.testing.assert_array_equal(outcome.reconstructed, [True, False, True, False])


def test_parity_late_too_waits_for_the_original():
    members = FakeMembers(delays={"m0": 0.15, "parity": 5.0})
    outcome = infer(queries, members, deadline_s=0.02, timeout_s=2.0)
    assert not outcome.reconstructed.any() and not outcome.errors


def test_two_failures_in_a_group_give_a_clear_error_at_once():
    members = FakeMembers(failures={"m0", "parity"})
    start = time.monotonic()
    outcome = Coordinator(ParMAddition(K), MEMBERS, 10.0, 20.0).infer(queries, members)
    assert time.monotonic() - start < 2.0
    assert sorted(outcome.errors) == [0, 2]
    assert "m0 is down" in outcome.errors[0] and "parity is down" in outcome.errors[0]
    np.testing.assert_allclose(outcome.outputs[[1, 3]], model(queries[[1, 3]]))


def test_everything_late_ends_at_the_timeout_with_an_error():
    members = FakeMembers(delays={"m0": 5.0, "parity": 5.0})
    outcome = infer(queries, members, deadline_s=0.01, timeout_s=0.1)
    assert sorted(outcome.errors) == [0, 2]
    assert "no answer in time" in outcome.errors[0]


def test_lone_query_goes_to_one_data_member_taking_turns_and_never_to_the_parity():
    one = queries[:1]
    members = FakeMembers()
    coordinator = Coordinator(ParMAddition(K), MEMBERS, 0.05, 1.0)
    called = []
    for _ in range(4):
        members.sent.clear()
        outcome = coordinator.infer(one, members)
        np.testing.assert_allclose(outcome.outputs, model(one))
        assert not outcome.reconstructed.any() and not outcome.errors
        (member,) = members.sent
        called.append(member)
    assert sorted(called) == ["m0", "m0", "m1", "m1"]


def test_lone_query_is_hedged_to_its_copy_at_once_on_an_error():
    members = FakeMembers(failures={"m0"})
    coordinator = Coordinator(ParMAddition(K), MEMBERS, deadline_s=10.0, timeout_s=20.0)
    for _ in range(2):  # whichever member the query goes to first
        start = time.monotonic()
        outcome = coordinator.infer(queries[:1], members)
        assert time.monotonic() - start < 2.0
        np.testing.assert_allclose(outcome.outputs, model(queries[:1]))
        assert not outcome.reconstructed.any() and not outcome.errors


def test_lone_query_is_hedged_to_its_copy_after_the_deadline():
    members = FakeMembers(delays={"m0": 5.0})
    coordinator = Coordinator(ParMAddition(K), MEMBERS, deadline_s=0.3, timeout_s=10.0)
    elapsed = []
    for _ in range(2):
        start = time.monotonic()
        outcome = coordinator.infer(queries[:1], members)
        elapsed.append(time.monotonic() - start)
        np.testing.assert_allclose(outcome.outputs, model(queries[:1]))
        assert not outcome.reconstructed.any()
    assert min(elapsed) < 0.3 <= max(elapsed) < 3.0  # m1 answers at once; m0's turn waits for the deadline
    assert "parity" not in members.sent


def test_lone_query_with_every_copy_gone_gets_a_clear_error():
    outcome = infer(queries[:1], FakeMembers(failures={"m0", "m1"}))
    assert "m0 is down" in outcome.errors[0] and "m1 is down" in outcome.errors[0]
    assert "worker 2" not in outcome.errors[0]


def test_coded_workers_are_called_while_some_query_fills_a_single_slot():
    coordinator = Coordinator(ParMAddition(3), ("m0", "m1", "m2", "parity"), 0.05, 1.0)
    called, reserved = coordinator.plan(GroupLayout.for_queries(1, 3))
    assert len(called) == 1 and sorted(called + reserved) == [0, 1, 2]
    assert coordinator.plan(GroupLayout.for_queries(2, 3)) == ([0, 1, 2, 3], [])  # slots [0, 1, 0]
    assert coordinator.plan(GroupLayout.for_queries(4, 3)) == ([0, 1, 2, 3], [])
    coordinator = Coordinator(ParMAddition(4), ("m0", "m1", "m2", "m3", "parity"), 0.05, 1.0)
    called, reserved = coordinator.plan(GroupLayout.for_queries(2, 4))  # slots [0, 1, 0, 1]
    assert sorted(np.array([0, 1, 0, 1])[called]) == [0, 1] and sorted(called + reserved) == [0, 1, 2, 3]


def test_member_returning_garbage_counts_as_missing():
    class Broken(FakeMembers):
        def __call__(self, member, batch):
            outputs = super().__call__(member, batch)
            return outputs * np.nan if member == "m0" else outputs

    outcome = infer(queries, Broken())
    np.testing.assert_array_equal(outcome.reconstructed, [True, False, True, False])
    assert "non-finite" in outcome.worker_errors[0]


def test_invalid_queries_are_named():
    assert "NaN" in invalid_query_reason(np.array([[np.nan, 0, 0]], np.float32))
    assert invalid_query_reason(queries) is None


def test_outcome_names_late_and_failed_workers_and_times_the_decode():
    outcome = infer(queries, FakeMembers(delays={"m0": 5.0}, failures={"m1"}), deadline_s=0.02, timeout_s=0.2)
    assert outcome.late_workers == (0,) and list(outcome.worker_errors) == [1]
    assert outcome.errors  # two of three missing: nothing to decode from
    outcome = infer(queries, FakeMembers(delays={"m0": 5.0}), deadline_s=0.02)
    assert outcome.late_workers == (0,) and outcome.decode_s > 0
    outcome = infer(queries, FakeMembers(delays={"parity": 5.0}), deadline_s=0.02)
    assert outcome.late_workers == () and outcome.decode_s == 0  # the race ended before the deadline


def test_a_member_that_keeps_missing_is_suspended_then_probed_back():
    class Clock:
        now = 0.0

        def __call__(self):
            return self.now

    members = FakeMembers(failures={"m0"})
    clock = Clock()
    coordinator = Coordinator(ParMAddition(K), MEMBERS, 0.05, 1.0, clock=clock, suspend_after=3, probe_interval_s=1.0)

    def run():
        members.sent.clear()
        return coordinator.infer(queries, members)

    for _ in range(3):
        run()
        assert "m0" in members.sent  # still called while misses < 3
    outcome = run()
    assert "m0" not in members.sent  # suspended: not called, decoded from the others at once
    np.testing.assert_array_equal(outcome.reconstructed, [True, False, True, False])
    assert "suspended after 3 consecutive misses" in outcome.worker_errors[0]
    members.failures.add("m1")  # m1 fails too: the suspended m0 is called after all, and answers
    members.failures.discard("m0")
    outcome = run()
    assert "m0" in members.sent and not outcome.errors
    np.testing.assert_array_equal(outcome.reconstructed, [False, True, False, True])
    members.failures = {"m0"}
    for _ in range(3):
        run()
    clock.now = 1.5
    members.failures.clear()
    run()
    assert "m0" in members.sent  # the probe, and it answered
    run()
    assert "m0" in members.sent and not run().reconstructed.any()


def test_outcome_counts_groups_and_padded_slots():
    outcome = infer(queries[:3], FakeMembers())
    assert (outcome.groups, outcome.padded_slots) == (2, 1)
    outcome = infer(queries, FakeMembers())
    assert (outcome.groups, outcome.padded_slots) == (2, 0)


def test_lone_query_goes_to_its_copy_while_a_member_is_suspended():
    members = FakeMembers(failures={"m0"})
    coordinator = Coordinator(ParMAddition(K), MEMBERS, 10.0, 20.0, suspend_after=1, probe_interval_s=60.0)
    coordinator.infer(queries[:1], members)
    coordinator.infer(queries[:1], members)  # m0 has missed by now, whichever turn came first
    reasons = []
    for _ in range(4):
        members.sent.clear()
        outcome = coordinator.infer(queries[:1], members)
        assert list(members.sent) == ["m1"] and not outcome.errors
        reasons.append(outcome.worker_errors.get(0, ""))
    assert sum("suspended" in reason for reason in reasons) == 2  # m0's turns, handed to its copy


def test_lone_queries_avoid_a_member_that_still_holds_a_late_call():
    members = FakeMembers(delays={"m0": 5.0})
    coordinator = Coordinator(ParMAddition(K), MEMBERS, deadline_s=0.3, timeout_s=10.0)
    for _ in range(2):  # m0 gets its turn in one of them, is hedged after the deadline and stays busy
        coordinator.infer(queries[:1], members)
    for _ in range(4):
        members.sent.clear()
        start = time.monotonic()
        outcome = coordinator.infer(queries[:1], members)
        assert time.monotonic() - start < 0.3 and not outcome.errors  # m1 at once, no deadline to wait
        assert list(members.sent) == ["m1"]
