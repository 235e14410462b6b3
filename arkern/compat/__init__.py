"""Drop-in APIs of other projects, implemented on arkern ops (every backend, any width)."""
