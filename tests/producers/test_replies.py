"""ReplyBook, the pure part of the client's reply routing: who gets a reply, what is kept, what is dropped."""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError

import pytest

from evostream.core.errors import ConsumeError, DeliveryError
from evostream.producers.replies import ReplyBook


def reply(key: str, text: str = "x") -> dict[str, object]:
    return {"reply_to": key, "output_text": text}


def test_a_waiter_gets_its_reply_and_a_duplicate_is_dropped() -> None:
    book = ReplyBook()
    fut = book.expect("a")
    assert not fut.done() and book.waiting == 1
    assert book.deliver("a", reply("a", "first"))
    assert fut.result(0) == reply("a", "first")
    assert not book.deliver("a", reply("a", "again"))  # a request served twice answers twice: the second is dropped
    assert (book.delivered, book.dropped, book.waiting) == (1, 1, 0)


def test_a_reply_before_the_ask_is_kept_only_for_this_clients_keys() -> None:
    book = ReplyBook()
    book.expect_later("mine")
    assert book.deliver("mine", reply("mine"))
    assert not book.deliver("theirs", reply("theirs"))
    assert book.has_reply("mine") and not book.has_reply("theirs")
    assert book.expect("mine").result(0) == reply("mine")
    assert not book.knows("mine")  # claimed: nothing kept twice
    assert not book.expect("theirs").done()  # another client's reply was not kept for anyone


def test_kept_keys_are_bounded_oldest_first() -> None:
    book = ReplyBook(keep=3)
    for k in "abcd":
        book.expect_later(k)
    assert [book.knows(k) for k in "abcd"] == [False, True, True, True]
    assert not book.deliver("a", reply("a"))


def test_exclusive_expect_refuses_a_key_already_awaited() -> None:
    book = ReplyBook()
    first = book.expect("k")
    assert book.expect("k") is first
    with pytest.raises(KeyError):
        book.expect("k", exclusive=True)


def test_forget_cancels_and_a_late_reply_is_dropped() -> None:
    book = ReplyBook()
    fut = book.expect("k")
    book.forget("k")
    assert fut.cancelled()
    with pytest.raises(CancelledError):
        fut.result(0)
    assert not book.deliver("k", reply("k"))


def test_fail_reaches_one_waiter_and_fail_all_every_waiter_and_later_ask() -> None:
    book = ReplyBook()
    a, b, c = book.expect("a"), book.expect("b"), book.expect("c")
    book.fail("a", DeliveryError("record to evo.requests failed delivery: broker down"))
    with pytest.raises(DeliveryError, match="broker down"):
        a.result(0)
    assert not b.done()
    book.fail_all(ConsumeError("consume failed"))
    for fut in (b, c, book.expect("d")):
        with pytest.raises(ConsumeError, match="consume failed"):
            fut.result(0)


def test_many_threads_each_get_exactly_their_own_reply() -> None:
    book = ReplyBook()
    keys = [f"k{i}" for i in range(2000)]
    futures = {k: book.expect(k) for k in keys}

    def deliver(part: list[str]) -> None:
        for k in part:
            book.deliver(k, reply(k, k.upper()))

    threads = [threading.Thread(target=deliver, args=(keys[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {k: f.result(0)["output_text"] for k, f in futures.items()} == {k: k.upper() for k in keys}
    assert (book.delivered, book.dropped, book.waiting) == (2000, 0, 0)
