"""Serving: the OpenAI-compatible HTTP server (app.py) over a continuous-batching scheduler
(scheduler.py), its web chat page (static/) and the terminal chat (terminal.py)."""
