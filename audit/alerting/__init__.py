"""Alerting on the audit log.

rules.py (what to watch), engine.py (the incident state machine), notify.py (messages and their
delivery), coalesce.py (asking for an evaluation after a failure), sweep.py (the minute sweep).
Celery reaches them through audit/tasks.py; they publish tasks by name, never import them.
"""
