"""``python -m serving.proto``: regenerate the committed stubs from ``schemas/convert.proto``."""

from __future__ import annotations

import sys

from serving.proto import ROOT, generate

if __name__ == "__main__":
    written = generate(ROOT)
    sys.stderr.write("".join(f"wrote {path.relative_to(ROOT)}\n" for path in written))
