"""The public front of systems with `public_front = true`: /public/{name}/front, its stream and widget."""
