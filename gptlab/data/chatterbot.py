"""ChatterBot corpus: YAML lists of conversations -> one document per conversation."""

from __future__ import annotations

import pathlib
from collections.abc import Mapping

from gptlab.data.documents import Document, check_members

__all__ = ["convert_chatterbot"]


def convert_chatterbot(members: Mapping[str, bytes]) -> list[Document]:
    """``chatterbot_corpus/data/<language>/<topic>.yml`` -> one document per conversation.

    Title ``"<topic> NNNN"``, genre = topic, turns = the utterances. Malformed entries (a bare
    string instead of a list of turns) and one-turn conversations are skipped.
    """
    check_members(members)
    try:
        import yaml
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the chatterbot corpora are YAML: install PyYAML (`pip install pyyaml`)"
        ) from exc
    documents = []
    for member, data in members.items():
        # BaseLoader keeps every scalar a string: YAML 1.1 would turn a reply "yes" into True.
        content = yaml.load(data.decode("utf-8"), Loader=yaml.BaseLoader) or {}
        topic = (content.get("categories") or [pathlib.PurePosixPath(member).stem])[0]
        for index, conversation in enumerate(content.get("conversations") or []):
            # A few entries are malformed (a bare string instead of a list of turns): skipped.
            if not isinstance(conversation, list) or not all(
                isinstance(turn, str) for turn in conversation
            ):
                continue
            turns = tuple(turn.strip() for turn in conversation)  # code answers keep newlines
            if len(turns) < 2 or not all(turns):
                continue  # a conversation needs a prompt and a reply
            documents.append(
                Document(f"{topic} {index:04d}", str(topic), "\n".join(turns) + "\n", turns)
            )
    return documents
