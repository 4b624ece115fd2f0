"""Serving the lab to a room: how the server starts (launch), what it loads before the first
request (preload), and who is connected and doing what (sessions)."""
