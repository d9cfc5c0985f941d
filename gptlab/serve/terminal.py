"""Chatting with a model in the terminal: ``python -m gptlab chat --model NAME``.

The same :class:`~gptlab.serve.backend.Backend` the HTTP server uses, so the reply is streamed
byte-safely (a character split over tokens is printed once it is whole), the model's own chat
template is applied (ChatML for SmolLM2, the book's format for gptlab models), and the history
is kept inside the context window by dropping the oldest exchanges, with a notice. Commands:
``/reset`` forgets the conversation, ``/system TEXT`` sets the system prompt (``/system`` alone
clears it), ``/quit`` (or end of input) stops.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gptlab.serve.backend import Message, SamplingParams

__all__ = ["TerminalChat"]


class TerminalChat:
    """A multi-turn conversation with ``backend``, printed as it streams."""

    def __init__(
        self,
        backend: Any,
        *,
        system: str | None = None,
        max_tokens: int = 256,
        temperature: float = 0.0,
        seed: int = 0,
        write: Callable[[str], None] | None = None,
    ) -> None:
        if system is not None and not isinstance(system, str):
            raise TypeError(f"system must be a string or None, got {type(system).__name__}")
        if max_tokens >= backend.context_window:
            raise ValueError(
                f"max_tokens={max_tokens} leaves no room for a prompt in the context window of "
                f"{backend.context_window} tokens; use at most {backend.context_window // 2}"
            )
        self.backend = backend
        self.system = system or None
        self.params = SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=seed)
        self.history: list[tuple[str, str]] = []  # (user, assistant) exchanges
        self.replies = 0
        self.write = write or (lambda text: print(text, end="", flush=True))

    def _messages(self, user: str) -> list[Message]:
        messages = [Message("system", self.system)] if self.system else []
        for question, answer in self.history:
            messages += [Message("user", question), Message("assistant", answer)]
        return messages + [Message("user", user)]

    def prompt(self, user: str) -> list[int]:
        """The prompt ids for ``user``, dropping the oldest exchanges until the reply fits."""
        room = self.backend.context_window - self.params.max_tokens
        ids = self.backend.encode_chat(self._messages(user))
        dropped = 0
        while len(ids) > room and self.history:
            self.history.pop(0)
            dropped += 1
            ids = self.backend.encode_chat(self._messages(user))
        if dropped:
            self.write(f"[dropped the oldest {dropped} exchange(s) to fit the context window]\n")
        if len(ids) > room:
            raise ValueError(
                f"this message is {len(ids)} tokens with the system prompt; at most {room} fit "
                f"beside a {self.params.max_tokens}-token reply: shorten it"
            )
        return ids

    def send(self, user: str) -> str:
        """Stream the reply to ``user`` through ``write`` and return it."""
        if not isinstance(user, str) or not user.strip():
            raise ValueError("write a message (an empty line is ignored)")
        ids = self.prompt(user)
        reply = []
        for delta in self.backend.stream(ids, self.params, lambda: False):
            self.write(delta.text)
            reply.append(delta.text)
        self.write("\n")
        text = "".join(reply)
        self.history.append((user, text))
        self.replies += 1
        return text

    def handle(self, line: str) -> bool:
        """One line typed by the user: a command or a message. Returns False to stop."""
        text = line.strip()
        if not text:
            return True
        if text in ("/quit", "/exit"):
            return False
        if text == "/reset":
            self.history.clear()
            self.write("[conversation cleared]\n")
            return True
        if text == "/system" or text.startswith("/system "):
            self.system = text[len("/system") :].strip() or None
            self.history.clear()
            said = f"set to {self.system!r}" if self.system else "cleared"
            self.write(f"[system prompt {said}; conversation cleared]\n")
            return True
        if text.startswith("/"):
            self.write(f"[unknown command {text.split()[0]!r}: use /reset, /system TEXT, /quit]\n")
            return True
        try:
            self.send(text)
        except ValueError as err:  # too long for the window: say so, keep chatting
            self.write(f"[{err}]\n")
        return True

    def run(self, read: Callable[[str], str] = input) -> int:
        """Read lines until /quit or the end of input; returns the number of replies."""
        start = self.replies
        while True:
            try:
                line = read("you> ")
            except EOFError:
                self.write("\n")
                return self.replies - start
            if not self.handle(line):
                return self.replies - start
