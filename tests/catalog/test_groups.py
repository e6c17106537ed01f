"""Consumer-group progress: next, end of stream, acks, nacks, resends, counters, ids."""

from __future__ import annotations

import re

import pytest

from asapo_hpc.catalog import Catalog, ResendPolicy, generate_group_id
from asapo_hpc.catalog.groups import PartialDeliveryError
from asapo_hpc.errors import (
    AsapoEndOfStreamError,
    AsapoNoDataError,
    AsapoPartialDataError,
    AsapoStreamFinishedError,
    AsapoWrongInputError,
)


@pytest.fixture
def five(catalog, make_message):
    catalog.add_messages([make_message(i) for i in range(1, 6)])
    return catalog


def drain(catalog, group="g", stream="s1", **kwargs):
    """Ids handed out until the group reaches an end or a gap."""
    ids = []
    while True:
        try:
            ids.append(catalog.group_next(group, "src", stream, **kwargs).data_id)
        except AsapoNoDataError:
            return ids


def test_generated_group_ids_are_20_chars_and_unique():
    ids = {generate_group_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"[0-9a-v]{20}", i) for i in ids)
    assert Catalog.generate_group_id() not in ids


def test_next_hands_out_ids_in_order_then_end_of_stream(five):
    assert drain(five) == [1, 2, 3, 4, 5]
    with pytest.raises(AsapoEndOfStreamError) as err:
        five.group_next("g", "src", "s1")
    assert not isinstance(err.value, AsapoStreamFinishedError)
    assert err.value.reply == {"op": "get_record_by_id", "id": 5, "id_max": 5,
                               "next_stream": ""}


def test_groups_are_independent(five):
    assert drain(five, "g1") == [1, 2, 3, 4, 5]
    assert drain(five, "g2") == [1, 2, 3, 4, 5]


def test_next_continues_when_the_stream_grows(five, make_message):
    drain(five)
    five.add_message(make_message(6))
    assert five.group_next("g", "src", "s1").data_id == 6


def test_next_on_a_missing_stream_is_end_of_stream(catalog):
    with pytest.raises(AsapoEndOfStreamError) as err:
        catalog.group_next("g", "src", "nothing")
    assert err.value.reply["id_max"] == 0


def test_next_at_end_of_finished_stream_names_next_stream(five):
    five.finish_stream("src", "s1", 5, "s2")
    drain(five)
    with pytest.raises(AsapoStreamFinishedError) as err:
        five.group_next("g", "src", "s1")
    assert err.value.next_stream == "s2"
    assert "continue with stream 's2'" in str(err.value)


def test_next_waits_at_a_gap_instead_of_skipping(catalog, make_message):
    catalog.add_messages([make_message(1), make_message(3)])
    assert drain(catalog) == [1]
    with pytest.raises(AsapoNoDataError) as err:
        catalog.group_next("g", "src", "s1")
    assert not isinstance(err.value, AsapoEndOfStreamError)
    assert err.value.reply == {"op": "get_record_by_id", "id": 2, "id_max": 3,
                               "next_stream": ""}
    catalog.add_message(make_message(2))
    assert drain(catalog) == [2, 3]


def test_next_dataset_complete_partial_and_waiting(catalog, make_part):
    catalog.add_messages([make_part(1, 1, 2), make_part(1, 2, 2), make_part(2, 1, 2),
                          make_part(3, 1, 2), make_part(3, 2, 2)])
    first = catalog.group_next("g", "src", "ds", dataset=True)
    assert (first.data_id, len(first.parts)) == (1, 2)
    with pytest.raises(AsapoNoDataError, match="1 of 2 parts"):
        catalog.group_next("g", "src", "ds", dataset=True)
    with pytest.raises(AsapoPartialDataError) as partial:
        catalog.group_next("g", "src", "ds", dataset=True, min_size=1)
    assert partial.value.partial_data.data_id == 2
    assert [p.dataset_substream for p in partial.value.partial_data.parts] == [1]
    # The partial dataset was handed out (the pointer moved past it).
    assert catalog.group_next("g", "src", "ds", dataset=True).data_id == 3


def test_dataset_deliveries_are_counted_for_complete_and_partial_ones(catalog, make_part):
    catalog.add_messages([make_part(1, 1, 2), make_part(1, 2, 2), make_part(2, 1, 2)])
    first = catalog.group_next_delivery("g", "src", "ds", dataset=True)
    assert (first.record.data_id, first.deliveries) == (1, 1)
    catalog.neg_acknowledge("g", "src", "ds", 1)
    again = catalog.group_next_delivery("g", "src", "ds", dataset=True)
    assert (again.record.data_id, again.deliveries) == (1, 2)
    with pytest.raises(PartialDeliveryError) as partial:
        catalog.group_next_delivery("g", "src", "ds", dataset=True, min_size=1)
    assert (partial.value.delivery.deliveries, partial.value.partial_data.data_id) == (1, 2)
    catalog.neg_acknowledge("g", "src", "ds", 2)
    # Redelivered without min_size: still partial (it was handed out), and counted again.
    with pytest.raises(AsapoPartialDataError, match=re.escape(
            "dataset 2 is partial: 1 of 2 parts; the parts that arrived are in "
            "partial_data")) as partial:
        catalog.group_next_delivery("g", "src", "ds", dataset=True)
    assert partial.value.delivery.deliveries == 2
    assert partial.value.partial_data is partial.value.delivery.record


def test_dataset_redelivered_after_its_resend_delay_counts_again(catalog, make_part, clock):
    catalog.add_messages([make_part(1, 1, 2), make_part(1, 2, 2), make_part(2, 1, 2)])
    policy = ResendPolicy(resend=True, delay_ms=1000, attempts=3)
    assert catalog.group_next_delivery("g", "src", "ds", dataset=True,
                                       resend=policy).deliveries == 1
    with pytest.raises(PartialDeliveryError):
        catalog.group_next_delivery("g", "src", "ds", dataset=True, min_size=1, resend=policy)
    clock.advance_ms(1000)
    again = catalog.group_next_delivery("g", "src", "ds", dataset=True, resend=policy)
    assert (again.record.data_id, again.deliveries) == (1, 2)
    with pytest.raises(PartialDeliveryError) as partial:
        catalog.group_next_delivery("g", "src", "ds", dataset=True, resend=policy)
    assert (partial.value.partial_data.data_id, partial.value.delivery.deliveries) == (2, 2)


def test_group_next_is_the_record_of_group_next_delivery(five, clock):
    policy = ResendPolicy(resend=True, delay_ms=10, attempts=-1)
    assert five.group_next("g", "src", "s1", resend=policy).data_id == 1
    clock.advance_ms(10)
    assert five.group_next("g", "src", "s1", resend=policy) == \
        five.get_by_id("src", "s1", 1)
    with pytest.raises(TypeError, match="min_sise"):  # its keywords are checked as before
        five.group_next("g", "src", "s1", min_sise=1)


def test_plain_next_on_a_dataset_stream_is_refused(catalog, make_part):
    catalog.add_messages([make_part(1, 1, 2), make_part(1, 2, 2)])
    with pytest.raises(AsapoWrongInputError, match="read it as a dataset"):
        catalog.group_next("g", "src", "ds")
    assert catalog.get_counter("g", "src", "ds") == 0


def test_acknowledge_last_acknowledged_and_unacknowledged(five):
    drain(five)
    for data_id in (1, 2, 4):
        five.acknowledge("g", "src", "s1", data_id)
    five.acknowledge("g", "src", "s1", 2)  # twice is harmless
    assert five.last_acknowledged("g", "src", "s1") == 4
    assert five.unacknowledged("g", "src", "s1") == [3, 5]
    assert five.unacknowledged("g", "src", "s1", 2, 4) == [3]
    assert five.unacknowledged("g", "src", "s1", 4) == [5]
    assert five.unacknowledged("other", "src", "s1") == [1, 2, 3, 4, 5]
    assert five.last_acknowledged("other", "src", "s1") == 0
    with pytest.raises(AsapoWrongInputError, match="to_id 2 is below from_id 3"):
        five.unacknowledged("g", "src", "s1", 3, 2)


def test_acknowledge_of_an_id_beyond_the_stream_is_refused(five):
    with pytest.raises(AsapoWrongInputError, match="cannot acknowledge message 6: .* ends at id 5"):
        five.acknowledge("g", "src", "s1", 6)
    with pytest.raises(AsapoWrongInputError, match="does not exist"):
        five.acknowledge("g", "src", "nope", 1)
    with pytest.raises(AsapoWrongInputError, match=">= 1"):
        five.acknowledge("g", "src", "s1", 0)


def test_negative_acknowledge_redelivers_after_the_delay(five, clock):
    assert five.group_next("g", "src", "s1").data_id == 1
    five.neg_acknowledge("g", "src", "s1", 1, delay_ms=500)
    assert five.group_next("g", "src", "s1").data_id == 2  # not due yet
    clock.advance_ms(500)
    assert five.group_next("g", "src", "s1").data_id == 1
    assert five.group_next("g", "src", "s1").data_id == 3  # redelivered once only


def test_negative_acknowledge_rules(five):
    five.group_next("g", "src", "s1")
    five.acknowledge("g", "src", "s1", 1)
    with pytest.raises(AsapoWrongInputError, match="already acknowledged"):
        five.neg_acknowledge("g", "src", "s1", 1)
    with pytest.raises(AsapoWrongInputError, match="delay_ms"):
        five.neg_acknowledge("g", "src", "s1", 2, delay_ms=-1)


def test_negative_acknowledge_of_an_id_not_delivered_yet_is_refused(five):
    """It would be handed out twice: as a redelivery, and again in its turn."""
    assert five.group_next("g", "src", "s1").data_id == 1
    with pytest.raises(AsapoWrongInputError, match="message 2 .* was not delivered to group "
                                                   "'g' yet"):
        five.neg_acknowledge("g", "src", "s1", 2)
    assert drain(five) == [2, 3, 4, 5]  # each once


def test_resend_of_unacknowledged_after_delay_with_attempt_limit(five, clock):
    policy = ResendPolicy(resend=True, delay_ms=1000, attempts=2)
    assert five.group_next("g", "src", "s1", resend=policy).data_id == 1
    five.group_next("g", "src", "s1", resend=policy)
    five.acknowledge("g", "src", "s1", 2)
    deliveries = []
    for _ in range(3):
        clock.advance_ms(1000)
        deliveries.append(five.group_next("g", "src", "s1", resend=policy).data_id)
    deliveries.append(five.group_next("g", "src", "s1", resend=policy).data_id)
    # 1 comes back twice (attempts=2), 2 never (acknowledged); then new ids.
    assert deliveries == [1, 1, 3, 4]
    clock.advance_ms(1000)
    # 1 is exhausted; 3 and 4 are due for their first resend, in due order.
    assert [five.group_next("g", "src", "s1", resend=policy).data_id for _ in range(3)] == [
        3, 4, 5]
    assert five.unacknowledged("g", "src", "s1") == [1, 3, 4, 5]


def test_without_resend_unacknowledged_messages_are_not_redelivered(five, clock):
    five.group_next("g", "src", "s1")
    clock.advance_ms(60_000)
    assert five.group_next("g", "src", "s1").data_id == 2


def test_unlimited_attempts(five, clock):
    policy = ResendPolicy(resend=True, delay_ms=10, attempts=-1)
    five.group_next("g", "src", "s1", resend=policy)
    for _ in range(5):
        clock.advance_ms(10)
        assert five.group_next("g", "src", "s1", resend=policy).data_id == 1


def test_resend_redelivers_at_the_end_of_a_finished_stream(five, clock):
    five.finish_stream("src", "s1", 5)
    policy = ResendPolicy(resend=True, delay_ms=100, attempts=1)
    assert drain(five, resend=policy) == [1, 2, 3, 4, 5]
    clock.advance_ms(100)
    assert drain(five, resend=policy) == [1, 2, 3, 4, 5]
    with pytest.raises(AsapoStreamFinishedError):
        five.group_next("g", "src", "s1", resend=policy)


def test_reset_counter(five):
    drain(five)
    five.reset_counter("g", "src", "s1", 3)
    assert five.get_counter("g", "src", "s1") == 3
    assert drain(five) == [4, 5]
    five.reset_counter("g", "src", "s1")
    assert drain(five) == [1, 2, 3, 4, 5]
    with pytest.raises(AsapoWrongInputError, match="counter value"):
        five.reset_counter("g", "src", "s1", -1)


def test_counter_may_be_set_before_the_stream_exists(catalog, make_message):
    catalog.reset_counter("g", "src", "later", 2)
    catalog.add_messages([make_message(i, stream="later") for i in (1, 2, 3)])
    assert catalog.group_next("g", "src", "later").data_id == 3


def test_group_progress_persists_across_reopen(catalog_path, clock, make_message):
    with Catalog(catalog_path, clock=clock) as first:
        first.add_messages([make_message(i) for i in range(1, 6)])
        assert drain_n(first, 3) == [1, 2, 3]
        first.acknowledge("g", "src", "s1", 2)
        first.neg_acknowledge("g", "src", "s1", 1, delay_ms=0)
    with Catalog(catalog_path, clock=clock) as second:
        assert second.last_acknowledged("g", "src", "s1") == 2
        assert drain_n(second, 3) == [1, 4, 5]


def drain_n(catalog, count):
    return [catalog.group_next("g", "src", "s1").data_id for _ in range(count)]


def test_group_names_are_checked(catalog):
    with pytest.raises(AsapoWrongInputError, match="group name"):
        catalog.group_next("", "src", "s1")


def test_redelivery_lookups_use_indexes_not_a_scan(catalog):
    from asapo_hpc.catalog import groups

    conn = catalog._connection()
    for sql, params in ((groups._NACK_DUE_SQL, ("g", "s", "t", 0, -1, -1)),
                        (groups._RESEND_DUE_SQL, (0, "g", "s", "t", 0, -1, -1))):
        plan = " ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params))
        assert "USING INDEX inflight_by_" in plan, plan
