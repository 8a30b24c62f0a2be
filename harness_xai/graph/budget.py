"""How many elements one chunk temporary of the fast rows may hold: from the device's free memory.

``fast.rows`` keeps about ``LIVE_TEMPORARIES`` fp32 tensors of shape (H, c, e) alive at once
(logits, soft-cap factor, probabilities, the path accumulator, a product, the chunk's edges), so a
budget of ``B`` bytes allows ``B / (4 · LIVE_TEMPORARIES)`` elements per temporary:
- override: ``chunk_elements=`` of ``graph``/``graph_from_trace``, else the environment variable
  ``HARNESS_XAI_GRAPH_CHUNK_ELEMENTS`` (an integer ≥ 1);
- CUDA: ``CUDA_SHARE`` of the free device memory (``torch.cuda.mem_get_info``, read when each
  block starts, after its re-run), so a 7B at 128k gets chunks of hundreds of rows, not one;
- CPU: ``CPU_SHARE`` of the available RAM (``MemAvailable`` in /proc/meminfo, psutil elsewhere),
  at most ``CPU_CAP_BYTES`` (= the old fixed 2²² elements): on a CPU the work per element is the
  same whatever the chunk, larger chunks only amortise per-call overhead (small at 2²²) and
  raise the peak. A GPU needs large chunks: at 128k tokens and 32 heads, 2²² elements is one
  target row per kernel launch.
The result is at least ``MIN_ELEMENTS``.
"""

from __future__ import annotations

import os

import torch

from harness_xai.errors import UserError

ENV = "HARNESS_XAI_GRAPH_CHUNK_ELEMENTS"
LIVE_TEMPORARIES = 6
CUDA_SHARE = 0.5
CPU_SHARE = 1 / 16
CPU_CAP_BYTES = 96 << 20
MIN_ELEMENTS = 1 << 16


def chunk_elements(device: torch.device | str, override: int | None = None) -> int:
    """Elements per (H, c, e) temporary on ``device`` (module docstring)."""
    if override is None and os.environ.get(ENV):
        text = os.environ[ENV]
        if not text.isdigit() or int(text) < 1:
            raise UserError(f"{ENV}={text!r} must be a positive integer (elements per chunk "
                            "temporary), or unset to size chunks from free memory.")
        override = int(text)
    if override is not None:
        return int(override)
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = free * CUDA_SHARE
    else:
        budget = min(available_ram() * CPU_SHARE, CPU_CAP_BYTES)
    return max(MIN_ELEMENTS, int(budget // (4 * LIVE_TEMPORARIES)))


def available_ram() -> int:
    """Bytes of RAM available to a new allocation (MemAvailable; psutil where no /proc)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil
        return int(psutil.virtual_memory().available)
    except ImportError:
        return 8 << 30  # unknown platform: assume 8 GiB
