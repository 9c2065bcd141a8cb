"""The database access both sides share: the event log, deliveries and entity state.

The receiver reads what the workers write (the API, the dashboard, the stream), so
these live beside both rather than in `workers/`, which the receiver never imports.
"""
