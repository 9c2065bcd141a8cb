"""The dashboard the receiver serves under `/`: see docs/dashboard.md."""
