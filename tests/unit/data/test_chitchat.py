"""Chit Chat parsing, examples (conversation so far -> that participant's reply),
held-out participants and the natural partition, on hand-built conversations."""
from __future__ import annotations

import numpy as np
import pytest

from fedmpi.data import chitchat
from fedmpi.errors import ConfigError


def _msg(sender: str, *texts: str) -> list[dict]:
    return [{"text": t, "sender": sender, "timestamp": "2018-05-02T19:38:15Z"} for t in texts]


RAW = {
    # keys sort b < c < z: chats are read in key order
    "c": {"messages": [_msg("bob", "hey", "there"), _msg("amy", "hi bob"), _msg("bob", "how are you?"),
                       _msg("amy", "fine"), _msg("bob", "cool")]},
    "b": {"messages": [_msg("amy", "ping"), _msg("cat", "pong")]},
    "z": {"messages": [_msg("dan", "talking to myself"), _msg("dan", "again")]},  # one speaker: no examples
}


def test_parse_indexes_speakers_in_sorted_order_and_joins_utterances() -> None:
    conv = chitchat.parse(RAW)
    assert conv.participants == ["amy", "bob", "cat", "dan"]
    assert conv.chats[0] == [(0, "ping"), (2, "pong")]  # chat "b" first
    assert conv.chats[1][0] == (1, "hey there")  # a message's utterances joined by a space
    assert len(conv.chats[1]) == 5


def test_each_reply_is_an_example_with_the_replier_as_assistant() -> None:
    conv = chitchat.parse(RAW)
    t = chitchat.turns(conv, history_turns=2)
    # chat b: cat replies to amy; chat c: amy, bob, amy, bob reply; chat z: none
    assert t.owner.tolist() == [2, 0, 1, 0, 1]
    assert t.turn.tolist() == [1, 1, 2, 3, 4]
    # history 2 would start at the replier's own message: trimmed to open with the other speaker
    assert t.start.tolist() == [0, 0, 1, 2, 3]
    train, test = chitchat.splits(conv, history_turns=2, test_participants=1e-9)
    assert len(test) == 0 and len(train) == 5
    assert train.prompts[2] == [{"role": "user", "content": "hi bob"}]
    assert train.responses[2] == "how are you?"
    assert train.prompts[4] == [{"role": "user", "content": "fine"}]
    assert train.responses[4] == "cool"
    long = chitchat.splits(conv, history_turns=3, test_participants=1e-9)[0]
    assert long.prompts[4] == [{"role": "user", "content": "hi bob"}, {"role": "assistant", "content": "how are you?"},
                               {"role": "user", "content": "fine"}]


def test_held_out_participants_are_fixed_and_never_train() -> None:
    people = [f"p{i}" for i in range(2000)]
    out = chitchat.held_out(people, 0.1)
    assert out.tolist() == chitchat.held_out(people, 0.1).tolist()  # a hash, not a seed
    assert 150 < out.sum() < 250
    conv = chitchat.parse(RAW)
    share = next(s for s in np.linspace(0.05, 0.95, 91) if chitchat.held_out(conv.participants, s)[0]
                 and not chitchat.held_out(conv.participants, s)[1])  # amy held out, bob not
    train, test = chitchat.splits(conv, 2, share)
    assert 0 in test.owners and 0 not in train.owners
    assert test.responses[list(test.owners).index(0)] in ("hi bob", "fine")


def test_natural_partition_one_participant_per_client() -> None:
    owners = np.array([3, 1, 3, 2, 3, 1, 5, 3, 1, 2])  # counts: 1 -> 3, 2 -> 2, 3 -> 4, 5 -> 1
    p = chitchat.natural_partition(owners, num_clients=2, min_client_samples=3, seed=0)
    assert p.participants == 4 and p.eligible == 2
    assert sorted(p.clients) == [1, 3]
    for client, part in zip(p.clients, p.parts):
        assert part.tolist() == np.flatnonzero(owners == client).tolist()
    again = chitchat.natural_partition(owners, 2, 3, seed=0)
    assert again.clients == p.clients
    with pytest.raises(ConfigError, match="2 of 4 participants have at least 3"):
        chitchat.natural_partition(owners, num_clients=3, min_client_samples=3, seed=0)


def test_packaged_dataset_counts() -> None:
    pytest.importorskip("chitchat_dataset")
    conv = chitchat.read()
    assert len(conv.chats) == 7168 and len(conv.participants) == 1315
