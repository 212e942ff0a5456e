"""Files in and out: presigned uploads with verification, and streamed exports.

Imports services.teams.teams and below.
"""
