"""A local stand-in for OpenAI's ChatKit sessions API, for development, demos, tests and load tests.

A development tool, not part of the product: production images do not carry aiohttp, which it
needs (requirements/dev.txt). It answers like https://api.openai.com/v1/chatkit/sessions as the
OpenAPI spec, openai-python's types and user reports describe it (same fields, same error
envelope, same messages; unknown parameters are refused, as OpenAI's newer endpoints do). It can
also be told to misbehave (5xx, 429, HTML bodies, slowness, dropped or hanging connections) so
that the broker's retries and timeouts are exercised over a real socket.

Free of Django but for its management command (`manage.py chatkit_emulator`): import what you
need from its modules (server, state, faults, validation). This file imports nothing, so that
Django can load the app where aiohttp is not installed.
"""
