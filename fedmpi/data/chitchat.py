"""The Chit Chat Challenge conversations (PyPI `chitchat-dataset`, JSON inside the
wheel): 7,168 two-person chats among 1,315 participants, a natural federation.

Each participant is a client. An example is (the conversation so far -> that
participant's next message), the participant speaking as `assistant` and the
other as `user`; a message is its consecutive utterances joined by a space.
The context is the last `history_turns` messages, trimmed to start with the
other speaker (chat templates expect a user turn first). Single-speaker chats
give no examples.

Held-out participants (a fixed ~`test_participants` share, chosen by a hash of
their id, the same for every seed) never train: all their replies form the test
split, so `eval_loss` measures how well the model predicts *unseen* people. Their
messages may still appear as the other side of a training participant's chats.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedmpi.data.instructions import Lazy, LMSplit, Messages
from fedmpi.errors import ConfigError

NAME = "chitchat"


def dataset_path() -> Path:
    """dataset.json inside the installed wheel (found without importing it)."""
    spec = importlib.util.find_spec("chitchat_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("data.name 'chitchat' needs the packaged conversations: pip install chitchat-dataset==0.9.0")
    path = Path(list(spec.submodule_search_locations)[0]) / "dataset.json"
    if not path.is_file():
        raise ConfigError(f"data.name 'chitchat': {path} is missing from the installed chitchat-dataset wheel")
    return path


@dataclass
class Conversations:
    """Every chat as (speaker index, text) messages; speakers indexed in sorted-id order."""
    chats: list[list[tuple[int, str]]]
    participants: list[str]  # speaker index -> participant id


def parse(raw: dict) -> Conversations:
    """The wheel's JSON ({chat id: {"messages": [[{text, sender, ...}, ...], ...]}}) in a fixed order."""
    senders = sorted({u["sender"] for chat in raw.values() for m in chat["messages"] for u in m})
    index = {s: i for i, s in enumerate(senders)}
    chats = []
    for key in sorted(raw):
        chat = []
        for message in raw[key]["messages"]:
            if not message:
                continue
            text = " ".join(u["text"].strip() for u in message if u["text"].strip())
            if text:
                chat.append((index[message[0]["sender"]], text))
        chats.append(chat)
    return Conversations(chats, senders)


def read(path: Path | None = None) -> Conversations:
    path = dataset_path() if path is None else path
    try:
        return parse(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot parse chitchat conversations {path}: {type(exc).__name__}: {exc}") from None


@dataclass
class Turns:
    """One row per example: chat, position of the reply, first context message."""
    chat: np.ndarray
    turn: np.ndarray
    start: np.ndarray
    owner: np.ndarray  # the replying participant


def turns(conv: Conversations, history_turns: int) -> Turns:
    chat, turn, start, owner = [], [], [], []
    for c, messages in enumerate(conv.chats):
        if len({s for s, _ in messages}) < 2:
            continue
        for i in range(1, len(messages)):
            speaker = messages[i][0]
            s = max(0, i - history_turns)
            while s < i and messages[s][0] == speaker:  # open with the other speaker
                s += 1
            if s == i:
                continue
            chat.append(c), turn.append(i), start.append(s), owner.append(speaker)
    arr = lambda xs: np.asarray(xs, dtype=np.int64)  # noqa: E731
    return Turns(arr(chat), arr(turn), arr(start), arr(owner))


def held_out(participants: list[str], share: float) -> np.ndarray:
    """Bool per participant: held out for testing. A hash of the id, so the same
    people are unseen whatever the seed or the number of clients."""
    cut = int(round(share * 2**32))
    return np.asarray([int.from_bytes(hashlib.sha256(p.encode()).digest()[:4], "big") < cut for p in participants])


def splits(conv: Conversations, history_turns: int, test_participants: float) -> tuple[LMSplit, LMSplit]:
    """(train, test): replies of training participants, replies of held-out ones."""
    t = turns(conv, history_turns)
    chats = conv.chats

    def prompt(i: int) -> Messages:
        messages, me = chats[t.chat[i]], t.owner[i]
        return [{"role": "assistant" if s == me else "user", "content": text}
                for s, text in messages[t.start[i]:t.turn[i]]]

    def response(i: int) -> str:
        return chats[t.chat[i]][t.turn[i]][1]

    test_people = held_out(conv.participants, test_participants)
    is_test = test_people[t.owner]
    everything = LMSplit(Lazy(prompt, np.arange(len(t.owner))), Lazy(response, np.arange(len(t.owner))), t.owner,
                         np.full(len(t.owner), -1, np.int64))
    return everything.subset(np.flatnonzero(~is_test)), everything.subset(np.flatnonzero(is_test))


@dataclass
class NaturalPartition:
    parts: list[np.ndarray]
    clients: list[int]  # participant index of each client
    participants: int  # participants with training replies
    eligible: int  # of those, with at least min_client_samples


def natural_partition(owners: np.ndarray, num_clients: int, min_client_samples: int, seed: int) -> NaturalPartition:
    """Each client is one participant: `num_clients` drawn (seeded) from those with at
    least `min_client_samples` training replies. Participants with fewer are left
    out (their replies are too few for a local step), not merged into others: a
    client stays one person's data."""
    ids, counts = np.unique(owners, return_counts=True)
    eligible = ids[counts >= min_client_samples]
    if num_clients > len(eligible):
        raise ConfigError(f"data.partition natural: {len(eligible)} of {len(ids)} participants have at least "
                          f"{min_client_samples} training examples (task_options.min_client_samples), fewer than "
                          f"federation.num_clients={num_clients}")
    chosen = np.random.default_rng([seed, 0xC1A7]).permutation(eligible)[:num_clients]
    order = np.argsort(owners, kind="stable")
    bounds = np.searchsorted(owners[order], chosen, side="left"), np.searchsorted(owners[order], chosen, side="right")
    parts = [np.sort(order[a:b]) for a, b in zip(*bounds)]
    return NaturalPartition(parts, [int(c) for c in chosen], len(ids), len(eligible))
