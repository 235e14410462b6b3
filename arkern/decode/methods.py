"""The sampling methods every model family chooses from, fastest first (docs/design.md, "Exactness").

- ``fused``: one compiled kernel call runs many steps (every layer and draw) without returning to Python;
- ``cached``: Python drives one step at a time over per-layer caches (O(layers) work per step);
- ``naive``: a full forward over everything generated so far per step — the reference.

Given the same model and the same pre-drawn uniforms, all three return the same samples.
"""

METHODS: tuple[str, ...] = ("fused", "cached", "naive")
