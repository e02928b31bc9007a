"""A desktop chat window around one edgekit Engine, in Tk (Python's standard library).

    python examples/desktop_chat.py ARTIFACT [--profile auto]

The model answers in a worker thread. Tk may only be touched from the thread that runs its loop,
so the worker puts what it reads from the engine's stream on a queue that the window polls."""

from __future__ import annotations

import argparse
import queue
import threading
import tkinter as tk
from tkinter import ttk

import edgekit

POLL_MS = 25


class ChatApp:
    def __init__(self, root: tk.Tk, engine: edgekit.Engine, max_new_tokens: int = 256):
        self.root = root
        self.engine = engine
        self.max_new_tokens = max_new_tokens
        self.messages: list[dict[str, str]] = []  # the whole conversation, sent again each turn
        self.updates: queue.Queue[tuple[str, object]] = queue.Queue()
        self.stop_requested = threading.Event()
        self.worker: threading.Thread | None = None
        self.answer: list[str] = []
        self.last_stats: edgekit.Stats | None = None

        root.title(f"edgekit chat - {engine.name}")
        root.columnconfigure(0, weight=1)
        root.rowconfigure(0, weight=1)
        self.transcript = tk.Text(root, wrap="word", state="disabled", width=80, height=24, padx=6, pady=6)
        self.transcript.tag_configure("you", foreground="#1f4e9c")
        self.transcript.grid(row=0, column=0, columnspan=3, sticky="nsew")
        self.entry = ttk.Entry(root)
        self.entry.grid(row=1, column=0, sticky="ew", padx=4, pady=4)
        self.entry.bind("<Return>", lambda event: self.send())
        self.send_button = ttk.Button(root, text="Send", command=self.send)
        self.send_button.grid(row=1, column=1, pady=4)
        self.stop_button = ttk.Button(root, text="Stop", command=self.stop, state="disabled")
        self.stop_button.grid(row=1, column=2, padx=4, pady=4)
        self.status = tk.StringVar(value=f"{engine.name} ({engine.backend})")
        ttk.Label(root, textvariable=self.status, anchor="w").grid(row=2, column=0, columnspan=3, sticky="ew", padx=4)
        root.protocol("WM_DELETE_WINDOW", self.close)
        self.entry.focus_set()
        root.after(POLL_MS, self.poll)

    @property
    def answering(self) -> bool:
        return self.worker is not None

    def send(self) -> None:
        question = self.entry.get().strip()
        if not question or self.answering:
            return
        self.entry.delete(0, "end")
        self.messages.append({"role": "user", "content": question})
        self.show(f"You: {question}\n", "you")
        self.answer = []
        self.stop_requested.clear()
        self.send_button.configure(state="disabled")
        self.stop_button.configure(state="normal")
        self.status.set(f"{self.engine.name}: answering...")
        self.worker = threading.Thread(target=self.generate, args=(list(self.messages),), daemon=True)
        self.worker.start()

    def generate(self, messages: list[dict[str, str]]) -> None:
        """Runs in the worker thread and never touches Tk."""
        try:
            outcome: object = self.read_stream(self.fit_context(messages))
        except Exception as exc:
            outcome = exc
        self.updates.put(("end", outcome))

    def read_stream(self, messages: list[dict[str, str]]) -> edgekit.Stats | None:
        """The answer's stats, or None when stopped."""
        chunks = self.engine.stream(messages, max_new_tokens=self.max_new_tokens)
        try:
            for chunk in chunks:
                if self.stop_requested.is_set():
                    return None
                self.updates.put(("text", chunk.text))
                if chunk.stats is not None:
                    return chunk.stats
            return None
        finally:
            # Closing the stream ends generation and releases the engine's lock; an abandoned
            # generator would hold that lock until it is garbage collected.
            chunks.close()

    def fit_context(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        """Drop the oldest exchanges until the prompt leaves room for an answer."""
        room = self.engine.max_context - self.max_new_tokens
        while len(messages) > 1 and len(self.engine.prompt_ids(messages)) > room:
            messages = messages[2:]
        return messages

    def stop(self) -> None:
        self.stop_requested.set()

    def poll(self) -> None:
        while True:
            try:
                kind, value = self.updates.get_nowait()
            except queue.Empty:
                break
            if kind == "text":
                self.answer.append(str(value))
                self.show(str(value))
            else:
                self.finish(value)
        self.root.after(POLL_MS, self.poll)

    def finish(self, outcome: object) -> None:
        self.worker = None
        self.messages.append({"role": "assistant", "content": "".join(self.answer)})
        self.show("\n\n")
        self.send_button.configure(state="normal")
        self.stop_button.configure(state="disabled")
        self.entry.focus_set()  # a click on Send or Stop moved the focus to that button
        if isinstance(outcome, edgekit.Stats):
            self.last_stats = outcome
            self.status.set(
                f"{self.engine.name}: {outcome.generated_tokens} tokens, {outcome.generation_tokens_per_s:.1f} tokens/s"
            )
        elif isinstance(outcome, Exception):
            self.status.set(f"{self.engine.name}: error: {outcome}")
        else:
            self.status.set(f"{self.engine.name}: stopped")

    def show(self, text: str, *tags: str) -> None:
        self.transcript.configure(state="normal")
        self.transcript.insert("end", text, tags)
        self.transcript.configure(state="disabled")
        self.transcript.see("end")

    def close(self) -> None:
        self.stop_requested.set()
        if self.worker is not None:
            self.worker.join(timeout=10)  # let the engine end its step before the interpreter exits
        self.root.destroy()


def main() -> None:
    parser = argparse.ArgumentParser(description="A desktop chat window for an edgekit artifact.")
    parser.add_argument("artifact", help="an exported artifact folder")
    parser.add_argument("--profile", default="auto", help="device profile: auto, a name, a .toml path, or none")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    args = parser.parse_args()
    engine = edgekit.load(args.artifact, profile=None if args.profile == "none" else args.profile)
    root = tk.Tk()
    ChatApp(root, engine, max_new_tokens=args.max_new_tokens)
    root.mainloop()


if __name__ == "__main__":
    main()
