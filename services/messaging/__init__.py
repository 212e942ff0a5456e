"""Telling people: email (templates, sending, suppression), the notification catalogue and
inbox, and the realtime event bus behind the SSE stream.

Imports services.jobs.queries and below.
"""
